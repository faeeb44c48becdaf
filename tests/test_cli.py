"""The CLI through click's CliRunner, plus real subprocesses of `edgert`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T

from edgert.cli import cli

import synth


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synth.write_model(tmp_path_factory.mktemp("c") / "tiny.gguf", "qwen2", T.Q4_0, n_layer=1)


def test_run_json(tiny):
    r = CliRunner().invoke(cli, ["run", str(tiny), "hello", "--temp", "0", "-n", "5", "--ignore-eos", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["tokens"] == 5 and out["finish_reason"] == "length"
    assert {"text", "prefill_tps", "decode_tps", "prompt_tokens"} <= out.keys()


def test_run_reads_stdin(tiny):
    r = CliRunner().invoke(cli, ["run", str(tiny), "-", "--temp", "0", "-n", "3", "--json", "--ignore-eos"],
                           input="from stdin")
    from edgert.tokenizer import Tokenizer

    n = len(Tokenizer.from_gguf(tiny).encode("from stdin"))
    assert r.exit_code == 0 and json.loads(r.stdout)["prompt_tokens"] == n


def test_run_chat_flag(tiny):
    r = CliRunner().invoke(cli, ["run", str(tiny), "hi", "--chat", "--system", "sys", "-n", "3", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["prompt_tokens"] > 10  # the template's markers were added


def test_chat_session_commands(tiny):
    r = CliRunner().invoke(cli, ["chat", str(tiny), "--temp", "0", "-n", "4"], input="hello\n/reset\nagain\n/exit\n")
    assert r.exit_code == 0, r.output
    assert "[conversation cleared]" in r.output


def test_chat_ctrl_d(tiny):
    r = CliRunner().invoke(cli, ["chat", str(tiny), "-n", "2"], input="hi\n")
    assert r.exit_code == 0


def test_inspect_json(tiny):
    r = CliRunner().invoke(cli, ["inspect", str(tiny), "--json"])
    info = json.loads(r.stdout)
    assert info["architecture"] == "qwen2" and info["layers"] == 1
    assert {t["type"] for t in info["tensor_types"]} == {"Q4_0", "F32"}
    assert info["chat_template"].startswith("{% for m in messages %}")


def test_wrong_flag_is_a_usage_error(tiny):
    r = CliRunner().invoke(cli, ["run", str(tiny), "hi", "--tempp", "1"])
    assert r.exit_code == 2 and "No such option" in r.output


def test_subprocess_run_streams_to_stdout(tiny):
    env = dict(os.environ)
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "edgert.cli", "run", str(tiny), "abc", "--temp", "0", "-n", "6",
                        "--ignore-eos"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "generated at" in p.stderr and "Traceback" not in p.stderr
    assert time.time() - t0 < 300


def test_subprocess_bad_file_no_traceback(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    p = subprocess.run([sys.executable, "-m", "edgert.cli", "run", str(bad), "hi"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1
    assert "not a GGUF file" in p.stderr and "Traceback" not in p.stderr
