"""Convert SeqGAN's oracle parameters (``save/target_params_py3.pkl``) to textgan's ``.npz``.

    python data/oracle/convert.py target_params_py3.pkl seqgan_oracle_lstm.npz

The pickle holds a list of 15 arrays in the order of SeqGAN's ``target_lstm.py``:
embedding, Wi, Ui, bi, Wf, Uf, bf, Wog, Uog, bog, Wc, Uc, bc, Wo, bo.
Only unpickle files you trust.
"""

import pickle
import sys

import numpy as np

KEYS = ["embedding", "Wi", "Ui", "bi", "Wf", "Uf", "bf", "Wo_gate", "Uo_gate", "bo_gate",
        "Wc", "Uc", "bc", "W_out", "b_out"]


def main(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        params = pickle.load(f, encoding="latin1")
    if len(params) != len(KEYS):
        raise SystemExit(f"expected {len(KEYS)} arrays in {src}, found {len(params)}")
    np.savez(dst, **{k: np.asarray(v, dtype=np.float32) for k, v in zip(KEYS, params, strict=True)})
    print(f"wrote {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
