"""Time one TextGAN-PyTorch RelGAN adversarial iteration (1 G + 5 D steps) on CPU.

Not imported by textgan: ``textgan bench relgan --textgan-pytorch DIR`` runs this file in a
subprocess inside a TextGAN-PyTorch checkout (github.com/williamSYSU/TextGAN-PyTorch; never
fetched by textgan), so that both implementations are timed in the same run on the same machine.
The steps are those of its instructor (``instructor/oracle_data/relgan_instructor.py``:
sample one-hots, RSGAN losses, clip, Adam), with random real batches, at the settings of
``textgan bench relgan``: B=64, T=20, V=5000, RMC 1 slot x 2 heads x 256 (embedding 32),
D with 64 representations x filters 2-5 x 300. By hand:

    cd TextGAN-PyTorch && PYTHONPATH=. python -m textgan.bench.textgan_pytorch_relgan 2

(argument: torch threads; ``--quick`` for a smoke test at small sizes). The last line printed
is ``RESULT <G step s> <D step s>``.

``--serve``: after the same set-up and warm-up, print ``READY`` and then, for each line
``iteration`` read from stdin, run one iteration (1 G + 5 D steps) and print ``TIME <s>``; stop
at ``quit`` or the end of stdin. ``textgan bench relgan`` uses it to alternate iterations of
both implementations (:func:`textgan.bench.relgan.paired_iterations`), so that the two times of
each pair are measured seconds apart.
"""

import importlib
import sys
import time

import torch
import torch.nn.functional as F


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 2
    torch.set_num_threads(threads)
    cfg = importlib.import_module("config")  # TextGAN-PyTorch's global config module
    cfg.CUDA, cfg.model_type, cfg.loss_type = False, "RMC", "rsgan"
    V, T, B = (500, 10, 16) if "--quick" in sys.argv else (5000, 20, 64)
    cfg.vocab_size, cfg.max_seq_len, cfg.batch_size = V, T, B
    G_cls = importlib.import_module("models.RelGAN_G").RelGAN_G
    D_cls = importlib.import_module("models.RelGAN_D").RelGAN_D
    get_losses = importlib.import_module("utils.helpers").get_losses

    torch.manual_seed(0)
    G = G_cls(1, 2, 256, 32, 32, V, T, cfg.padding_idx, gpu=False)
    D = D_cls(64, T, 64, V, cfg.padding_idx, gpu=False)
    G.temperature = 2.0
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-4)
    real = torch.randint(V, (B, T))

    def step(train_g: bool) -> None:
        fake = G.sample(B, B, one_hot=True)
        g_loss, d_loss = get_losses(D(F.one_hot(real, V).float()), D(fake), "rsgan")
        model, opt, loss = (G, opt_g, g_loss) if train_g else (D, opt_d, d_loss)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()

    def iteration() -> None:
        step(True)
        for _ in range(5):
            step(False)

    # warm-up: one whole iteration. Its first steps run ~30% slower than its steady state
    # (session 15: 28.0, 24.9, 26.1, 24.4, 24.2, 22.3, 23.2 s for its first 7 iterations), so
    # timing after one G and one D step, as until then, overstated its iteration time.
    iteration()
    if "--serve" in sys.argv:
        print("READY", flush=True)
        for line in sys.stdin:
            if line.strip() != "iteration":
                break
            start = time.perf_counter()
            iteration()
            print(f"TIME {time.perf_counter() - start:.6f}", flush=True)
        return
    times = {}
    for name, train_g in (("G", True), ("D", False)):
        start = time.perf_counter()
        for _ in range(2):
            step(train_g)
        times[name] = (time.perf_counter() - start) / 2
    print(f"TextGAN-PyTorch RelGAN ({threads} threads): G step {times['G']:.2f} s, "
          f"D step {times['D']:.2f} s, iteration 1G+5D {times['G'] + 5 * times['D']:.2f} s")
    print(f"RESULT {times['G']:.6f} {times['D']:.6f}")


if __name__ == "__main__":
    main()
