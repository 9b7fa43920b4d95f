"""``textgan compare-estimators``: the CLI writes its outputs; user errors are clear."""

import argparse
import json

import pytest
import torch

from textgan import compare
from textgan.cli import main

# Tiny tensors: extra threads only add contention (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _args(argv):
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return parser.parse_args(argv)


OUTPUTS = ("results.json", "results.md", "bias_vs_tau.png", "variance_vs_tau.png",
           "mse_vs_samples.png")


def test_cli_writes_results_toy(tmp_path):
    out = tmp_path / "toy"
    args = _args(["--problem", "toy", "--estimators", "sf,sf_rloo,gs,gumbel_rao,rebar",
                  "--taus", "0.5,1.0", "--samples", "1,4", "--draws", "200", "--no-progress",
                  "--out", str(out)])
    assert compare.run(args) == 0
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert (out / "bias_vs_tau.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert len(rows) == 4 * 5 * 2 * 2  # problems x estimators x taus x samples
    assert set(data["exact_grad"]) == {"toy_binary_t0.499", "toy_binary_t0.45", "toy_cat5",
                                       "toy_cat5_sq"}
    rloo1 = [r for r in rows if r["estimator"] == "sf_rloo" and r["samples"] == 1]
    assert rloo1 and all(r["bias_l2"] is None and "samples >= 2" in r["note"] for r in rloo1)
    ok = [r for r in rows if r["bias_l2"] is not None]
    for r in ok:
        assert r["variance"] >= 0 and r["mse"] >= 0 and r["ms_per_estimate"] > 0
        # mse = bias^2 + variance * (D - 1) / D up to rounding
        expected = r["bias_l2"] ** 2 + r["variance"] * 199 / 200
        assert abs(r["mse"] - expected) <= 1e-6 * max(1.0, expected)
    # sf does not depend on tau: identical rows
    sf = [r for r in rows if r["estimator"] == "sf" and r["problem"] == "toy_cat5"
          and r["samples"] == 4]
    assert sf[0]["variance"] == sf[1]["variance"]
    md = (out / "results.md").read_text()
    header = ("| problem | estimator | tau | samples | bias_l2 | cosine | variance | mse | "
              "ms_per_estimate |")
    assert header in md and "n/a" in md


def test_cli_sequence_via_dispatcher(tmp_path, capsys):
    out = tmp_path / "seq"
    code = main(["compare-estimators", "--problem", "sequence", "--estimators",
                 "sf,gs,st,gumbel_rao,rebar", "--taus", "1.0", "--samples", "2",
                 "--draws", "50", "--no-progress", "--out", str(out)])
    assert code == 0
    for name in OUTPUTS:
        assert (out / name).exists(), name
    rows = json.loads((out / "results.json").read_text())["rows"]
    rebar = [r for r in rows if r["estimator"] == "rebar"]
    assert rebar and rebar[0]["bias_l2"] is None and "single-categorical" in rebar[0]["note"]
    assert all(r["bias_l2"] is not None for r in rows if r["estimator"] != "rebar")
    assert "| sequence | rebar | 1 | 2 | n/a |" in (out / "results.md").read_text()


@pytest.mark.parametrize("argv,match", [
    (["--estimators", "sf,gumbel_rau"], "unknown estimator 'gumbel_rau'.*did you mean "
                                        "'gumbel_rao'"),
    (["--taus", "0.5,0"], "tau"),
    (["--taus", "-1"], "tau"),
    (["--taus", "a,b"], "--taus"),
    (["--samples", "0"], "--samples"),
    (["--draws", "1"], "--draws"),
    (["--problem", "sequense"], "did you mean 'sequence'"),
    (["--problem", "checkpoint"], "needs --checkpoint PATH"),
    (["--problem", "toy", "--checkpoint", "x.pt"], "only used with --problem checkpoint"),
])
def test_user_errors(tmp_path, argv, match):
    args = _args([*argv, "--no-progress", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=match):
        compare.run(args)
    assert not (tmp_path / "o").exists()


def test_dispatcher_reports_user_error(tmp_path, capsys):
    code = main(["compare-estimators", "--taus", "0", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "tau" in capsys.readouterr().err


def test_problem_registry_is_pluggable(tmp_path, monkeypatch):
    class Fixed(compare.ToyProblem):
        pass

    made = []

    def factory(args):
        made.append(args)
        return [Fixed("mine", torch.zeros(3), lambda y: y[..., 0])]

    monkeypatch.setitem(compare.PROBLEMS, "mine", factory)
    out = tmp_path / "mine"
    args = _args(["--problem", "mine", "--estimators", "sf", "--taus", "1", "--samples", "2",
                  "--draws", "20", "--no-progress", "--out", str(out)])
    assert compare.run(args) == 0 and made
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["problem"] for r in rows] == ["mine"]


def test_plugin_problems_need_their_module(tmp_path, monkeypatch):
    # the real plug-in modules may exist (or not) in this build: point at ones that do not
    monkeypatch.setitem(compare.PLUGIN_MODULES, "vae", "textgan.models._no_such_vae")
    monkeypatch.setitem(compare.PLUGIN_MODULES, "checkpoint", "textgan.train._no_such_gan")
    args = _args(["--problem", "vae", "--no-progress", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"problem 'vae' needs textgan.models._no_such_vae "
                                         r"\(not available yet\)"):
        compare.run(args)
    # a module without the hook
    monkeypatch.setitem(compare.PLUGIN_MODULES, "vae", "textgan.sampling")
    with pytest.raises(ValueError, match=r"textgan.sampling.estimator_problems\(args\)"):
        compare.run(args)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"")
    args = _args(["--problem", "checkpoint", "--checkpoint", str(ckpt), "--no-progress",
                  "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="problem 'checkpoint' needs textgan.train._no_such_gan"):
        compare.run(args)
    missing = _args(["--problem", "checkpoint", "--checkpoint", str(tmp_path / "nope.pt"),
                     "--no-progress", "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError):
        compare.run(missing)
