"""Write the oracle LSTM that RelGAN's official code builds, as textgan's ``.npz``.

    pip install tensorflow-cpu        # only for this script; textgan does not need it
    python data/oracle/relgan_code_oracle.py relgan_code_oracle.npz [seqgan_oracle_lstm.npz]

RelGAN's code (github.com/weilinie/RelGAN, ``utils/models/OracleLstm.py``, taken from Texygen)
does not load SeqGAN's ``target_params`` file: it draws every parameter of a V=5000, E=H=32
LSTM from ``tf.random_normal(shape, 0, 1, seed=...)`` with the op seeds written in that file and
graph seed 1234. This script repeats those draws (``tf.compat.v1`` graph mode) and saves them
in the layout ``OracleLSTM.from_npz`` reads; with a second argument it prints how far they are
from that file. textgan builds the same oracle without TensorFlow (``data.oracle=relgan_code``,
``textgan/tf_random.py``); this script is the cross-check of that: TensorFlow 2.21.0's arrays
and textgan's agree in 98.5 % of the values, the rest within 3 float32 units in the last place.

Measured (TensorFlow 2.21.0; TF 1.x, which RelGAN ran, was not available to compare): the
arrays differ from SeqGAN's file entirely (max |difference| 2.3-6.8 per array), and 5,000
sequences the oracle samples score NLL_oracle 5.834 under it, against 5.755 for SeqGAN's
oracle (the "real data" row, 5.750, of RelGAN's Table 1 is SeqGAN's). See recipes/README.md.
"""

import sys

import numpy as np

V, E, H = 5000, 32, 32
# name in textgan's .npz -> (shape, op seed), in the order of RelGAN's OracleLstm
SEEDS = {
    "embedding": ((V, E), 123314154),
    "Wi": ((E, H), 111), "Ui": ((H, H), 211), "bi": ((H,), 311),
    "Wf": ((E, H), 114), "Uf": ((H, H), 115), "bf": ((H,), 116),
    "Wo_gate": ((E, H), 997), "Uo_gate": ((H, H), 998), "bo_gate": ((H,), 999),
    "Wc": ((E, H), 110), "Uc": ((H, H), 111), "bc": ((H,), 112),
    "W_out": ((H, V), 12341), "b_out": ((V,), 56865246),
}


def main(dst: str, compare: str | None = None) -> None:
    import tensorflow as tf  # noqa: PLC0415 - optional, only this script needs it

    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    graph = tf1.Graph()
    with graph.as_default():
        tf1.set_random_seed(1234)
        ops = {k: tf1.random_normal(shape, 0.0, 1.0, seed=seed)
               for k, (shape, seed) in SEEDS.items()}
        with tf1.Session(graph=graph) as sess:
            params = sess.run(ops)
    np.savez(dst, **{k: np.asarray(v, dtype=np.float32) for k, v in params.items()})
    print(f"wrote {dst} (tensorflow {tf.__version__})")
    if compare:
        with np.load(compare) as other:
            for k, v in params.items():
                print(f"{k:10s} max |difference| {np.abs(v - other[k]).max():.3f}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
