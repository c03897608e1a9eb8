"""Bring your own network: a network in a file outside the package trains, summarises (with its receptive
field), is judged over seeds against its budgets, evaluates, exports, predicts and gets a report, through the
CLI and the Python API; its checkpoints never import its code."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, cli, fails

EXAMPLE = "examples/my_net.py:MyNet"


@pytest.fixture(scope="module")
def user_runs(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("byo")
    proc = cli("train", EXAMPLE, "--recipe", "final", "--seeds", "1-2", "--limit", "512", "--epochs", "2",
               "--max-params", "8000", "--data-dir", str(mnist_dir), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_user_network_trains_into_records_that_name_its_code_and_budgets(user_runs):
    for seed in (1, 2):
        rec = json.loads((user_runs / "my_net.MyNet" / f"seed{seed}.json").read_text())
        assert rec["model"] == EXAMPLE and rec["params"] == 6114
        assert rec["source"]["ref"] == EXAMPLE and len(rec["source"]["sha256"]) == 64 and rec["source"]["args"] == {}
        assert rec["budget"]["max_params"] == 8000 and rec["budget"]["hold"] == 5
        assert rec["recipe"]["ghost_batch"] == 64  # --recipe final: the final model's
        ckpt = torch.load(user_runs / "my_net.MyNet" / f"seed{seed}.pt", weights_only=True)
        assert ckpt["source"] == rec["source"]


def test_summary_measures_the_receptive_field_of_a_user_network():
    info = json.loads(cli("summary", EXAMPLE, "--json").stdout)
    assert info["params"] == 6114
    rfs = {layer["name"]: (layer["rf"], layer["jump"]) for layer in info["layers"]}
    assert rfs["features.0.0"] == (3, 1) and rfs["features.1"] == (4, 2) and rfs["classifier"] == (16, 2)
    small = json.loads(cli("summary", "examples/my_net.py:small_net", "--model-arg", "width=4", "--json").stdout)
    assert small["params"] < info["params"]


def test_eval_export_predict_and_report_on_a_user_checkpoint(user_runs, mnist_dir, tmp_path):
    ckpt = str(user_runs / "my_net.MyNet" / "seed1.pt")
    rec = json.loads((user_runs / "my_net.MyNet" / "seed1.json").read_text())
    fails(cli("eval", ckpt, "--data-dir", str(mnist_dir)), f"name that code with --model {EXAMPLE}")
    res = json.loads(cli("eval", ckpt, "--model", EXAMPLE, "--data-dir", str(mnist_dir), "--limit", "512",
                         "--json").stdout)
    assert res["correct"] == rec["epochs"][-1]["test_correct"]
    onnx = cli("export", ckpt, "--model", EXAMPLE, "--onnx", str(tmp_path / "my.onnx"), "--data-dir",
               str(mnist_dir), "--limit", "200")
    assert onnx.returncode == 0 and "(OK)" in onnx.stdout, onnx.stderr
    from PIL import Image

    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    img = Image.new("L", (40, 40), 255)
    for y in range(8, 32):
        img.putpixel((20, y), 0)
    img.save(tmp_path / "one.png")
    pred = cli("predict", ckpt, str(tmp_path / "one.png"), "--model", EXAMPLE, "--json")
    assert pred.returncode == 0 and 0 <= json.loads(pred.stdout)[0]["digit"] <= 9, pred.stderr
    report = cli("report", "--results", str(user_runs), "--out", str(tmp_path / "report"), "--model", EXAMPLE,
                 "--data-dir", str(mnist_dir))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"| {EXAMPLE} | 6,114 | 1, 2 | 0 of 2 |" in text and "<= 8,000 params" in text
    for png in ("test_curves.png", "train_vs_test.png", "my_net.MyNet-confusion.png", "my_net.MyNet-mistakes.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000, png


def test_a_changed_file_is_refused_unless_forced(user_runs, tmp_path, mnist_dir):
    changed = tmp_path / "my_net.py"
    changed.write_text((ROOT / "examples" / "my_net.py").read_text() + "\n# changed\n")
    ckpt = str(user_runs / "my_net.MyNet" / "seed1.pt")
    fails(cli("eval", ckpt, "--model", f"{changed}:MyNet", "--data-dir", str(mnist_dir)), "--force")
    forced = cli("eval", ckpt, "--model", f"{changed}:MyNet", "--force", "--data-dir", str(mnist_dir),
                 "--limit", "64")
    assert forced.returncode == 0 and "warning" in forced.stderr and "SHA-256" in forced.stderr, forced.stderr


def test_a_checkpoint_naming_code_never_imports_it(tmp_path, mnist_dir, monkeypatch):
    """A checkpoint whose reference names a module with a side effect: loading it does not run that module."""
    monkeypatch.syspath_prepend(tmp_path)  # `evil` is importable: only the code's refusal keeps it unimported
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nimport torch\n"
                                      "Net = torch.nn.Linear\n")
    state = {"weight": torch.zeros(10, 784), "bias": torch.zeros(10)}
    for ref in (f"{tmp_path / 'evil.py'}:Net", "evil:Net"):
        ckpt = tmp_path / "evil.pt"
        torch.save({"model": ref, "source": {"ref": ref, "sha256": "0" * 64, "args": {}}, "state_dict": state}, ckpt)
        for args in (("eval", str(ckpt), "--data-dir", str(mnist_dir)), ("predict", str(ckpt), str(ckpt)),
                     ("export", str(ckpt), "--onnx", str(tmp_path / "x.onnx"))):
            proc = cli(*args)
            assert proc.returncode == 2 and "never runs code" in proc.stderr, proc.stderr
        assert not marker.exists() and "evil" not in sys.modules


@pytest.mark.parametrize("source, ref, extra, fragment", [
    (None, "examples/nope.py:Net", (), "does not exist"),
    (None, "examples/my_net.py:Nope", (), "has no 'Nope'; it defines: MyNet, small_net"),
    ("X = 3\n", "{f}:X", (), "is a int, not an nn.Module subclass or a function"),
    ("def make():\n    raise ValueError('no')\n", "{f}:make", (), "building it raised ValueError: no"),
    ("import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return x[:, 0, 0, :10]\n",
     "{f}:Net", (), "has no trainable parameters"),
    ("import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))\n",
     "{f}:make", (), "returned (2, 5) for a (2, 1, 28, 28) batch; expected (2, 10)"),
    (None, EXAMPLE, ("--max-params", "5000"), "6,114 parameters, over the budget of 5,000"),
    (None, EXAMPLE, ("--model-arg", "depth=3"), "has no argument 'depth'; valid: width, dropout"),
    (None, EXAMPLE, ("--model-arg", "width=wide"), "--model-arg width=wide"),
    (None, EXAMPLE, ("--set", "lrr=1"), "unknown recipe field 'lrr'; valid: epochs"),
])
def test_bad_user_networks_are_one_line_and_write_nothing(tmp_path, source, ref, extra, fragment):
    f = tmp_path / "net.py"
    if source is not None:
        f.write_text(source)
    out = tmp_path / "out"
    proc = cli("train", ref.format(f=f), *extra, "--limit", "64", "--epochs", "1", "--out", str(out))
    fails(proc, fragment)
    assert not out.exists()


def readme_api_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Your own network", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_example_and_the_api_script_run(tmp_path, mnist_dir):
    env = {**os.environ, "TINYMNIST_DATA": str(mnist_dir),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "examples"), str(ROOT / "src")])}
    (tmp_path / "example.py").write_text(readme_api_example())
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "my_net.pt").is_file() and len(proc.stdout.split()) == 2
    script = subprocess.run([sys.executable, str(ROOT / "examples" / "train_api.py"), "--limit", "512", "--epochs",
                             "1", "--out", str(tmp_path / "api")], env=env, capture_output=True, text=True, timeout=300)
    assert script.returncode == 0 and "6,114 parameters, test accuracy" in script.stdout, script.stderr


def test_the_page_serves_a_user_checkpoint_with_its_feature_maps(user_runs):
    import http.client
    import threading

    from tinymnist import serve
    from tinymnist.model import resolve

    models, default = serve.load_models(str(user_runs / "my_net.MyNet" / "seed1.pt"), resolve(EXAMPLE))
    srv = serve.make_server(models, default, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
        conn.request("POST", f"/api/predict?model={default}", serve.drawn_digit_png(), {"Content-Type": "image/png"})
        res = json.loads(conn.getresponse().read())
        assert abs(sum(res["probabilities"]) - 1) < 1e-5 and 0 <= res["digit"] <= 9
        assert [f["layer"] for f in res["features"]][:2] == ["features.0.0", "features.2.0"]
    finally:
        srv.shutdown()
        srv.server_close()
