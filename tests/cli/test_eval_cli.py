"""`alignx eval`, `alignx generate`, `alignx judge`: stratified limits, resume after a kill, refusals
before any model runs, PyTorch parity of scores.jsonl on P-Soups, win rates.

Tiny random-init models are saved as alignx_jax folders with a byte-level transformers tokenizer
(259 ids), so every command runs as a user runs it, in seconds.
"""
import http.server
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from alignx_jax import cli, interop
from alignx_jax import preferences as prefs
from alignx_jax.models import llama

ALIGNX = pathlib.Path(sys.executable).parent / "alignx"
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def byte_tokenizer(extra_tokens=()):
    """A transformers tokenizer with one id per byte (BOS 1, EOS 2) and a chat template."""
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()) + list(extra_tokens):
        vocab[ch] = len(vocab)
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", chat_template=CHAT_TEMPLATE)


def save_model(folder, seed, tokenizer, **config):
    config = llama.LlamaConfig.tiny(vocab_size=320, **config)
    params = jax.jit(llama.init_params, static_argnums=0)(config, jax.random.key(seed))
    interop.save_native(params, config, folder, tokenizer=tokenizer)
    return str(folder)


def make_records(per_persona):
    records = []
    for p, persona in enumerate(("Generate a friendly response.", "Generate an unfriendly response.")):
        for i in range(per_persona):
            records.append({
                "prompt": f"Post {i}: what about topic {i % 7}?", "chosen": f"{'nice' if p == 0 else 'rude'} {i}",
                "rejected": f"plain {i}" + "." * (i % 5), "ground_truth_persona": persona,
                "profile": "High Agreeableness" if p == 0 else "Low Agreeableness",
                prefs.PAIRS: [{"prompt": f"q{j}", "chosen": "yes" if p == 0 else "no", "rejected": "meh"}
                              for j in range(1 + i % 3)],
            })
    return records


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Models and data files shared by the tests of this module."""
    root = tmp_path_factory.mktemp("eval_cli")
    tok = byte_tokenizer()
    paths = {
        "policy": save_model(root / "policy", 1, tok),
        "reference": save_model(root / "reference", 2, tok),
        "other_tok": save_model(root / "other_tok", 3, byte_tokenizer(extra_tokens=["<extra>"])),
        "data": root / "bench.json",
        "root": root,
    }
    paths["data"].write_text(json.dumps(make_records(40)))
    return paths


LIMIT_60 = ("--limit", "60", "--rows", "1")


def eval_args(work, out, *extra):
    return ["eval", "--policy", work["policy"], "--reference", work["reference"], "--data", str(work["data"]),
            "--out", str(out), *extra]


def read_jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def without_timing(report):
    return {k: v for k, v in report.items() if k != "timing"}


@pytest.fixture(scope="module")
def full_run(work):
    """An uninterrupted `alignx eval --limit 60` on the persona-sorted file (40 + 40 records).

    One pair per batch (`--rows 1`) gives each record the same row shape however a run is cut, so
    a resumed run's log-probs are bit-identical to these."""
    out = work["root"] / "full"
    assert cli.main(eval_args(work, out, *LIMIT_60)) == 0
    return out


def test_limit_60_scores_30_of_each_persona_and_worst_is_the_minimum(full_run):
    report = json.loads((full_run / "report.json").read_text())
    assert {k: v["n"] for k, v in report["per_persona"].items()} == {
        "Generate a friendly response.": 30, "Generate an unfriendly response.": 30}
    rows = read_jsonl(full_run / "scores.jsonl")
    assert sorted(r["index"] for r in rows) == list(range(30)) + list(range(40, 70))
    assert report["n"] == 60
    assert report["worst_persona_accuracy"] == min(v["accuracy"] for v in report["per_persona"].values())
    assert report["worst_persona_accuracy_logp"] == min(v["accuracy_logp"] for v in report["per_persona"].values())
    for name in ("report.md", "per_persona.png", "per_item_type.png", "per_history_size.png", "run.json"):
        assert (full_run / name).is_file()
    for key in ("policy_prompt", "reference_prompt", "chosen", "rejected", "policy_chosen_logp",
                "policy_rejected_logp", "ref_chosen_logp", "ref_rejected_logp", "persona"):
        assert key in rows[0]
    assert "worst persona" in (full_run / "report.md").read_text()


def test_resume_from_a_truncated_scores_file_equals_the_uninterrupted_run(work, full_run):
    out = work["root"] / "resumed"
    out.mkdir()
    shutil.copy(full_run / "run.json", out / "run.json")
    lines = (full_run / "scores.jsonl").read_text().splitlines(keepends=True)
    (out / "scores.jsonl").write_text("".join(lines[:25]) + lines[25][: len(lines[25]) // 2])  # killed mid-line
    assert cli.main(eval_args(work, out, *LIMIT_60)) == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["timing"]["records_resumed"] == 25 and resumed["timing"]["records_scored_now"] == 35
    assert without_timing(resumed) == without_timing(json.loads((full_run / "report.json").read_text()))
    assert len(read_jsonl(out / "scores.jsonl")) == 60
    # Run again: nothing left to score, same report.
    assert cli.main(eval_args(work, out, *LIMIT_60)) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["timing"]["records_scored_now"] == 0 and without_timing(again) == without_timing(resumed)


def test_killed_process_resumes_to_the_same_report(work, full_run):
    if not ALIGNX.is_file():
        pytest.skip(f"no installed entry point at {ALIGNX}")
    out = work["root"] / "killed"
    args = [str(ALIGNX), *eval_args(work, out, *LIMIT_60)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scores = out / "scores.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if scores.is_file() and scores.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = scores.read_bytes().count(b"\n")
    assert 3 <= partial < 60, f"the run was not killed mid-way ({partial} rows)"
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["timing"]["records_resumed"] == partial
    assert without_timing(report) == without_timing(json.loads((full_run / "report.json").read_text()))


def test_compare_prints_runs_side_by_side(work, full_run, capsys):
    other = work["root"] / "per_persona_5"
    data_parallel = ("--data-parallel",) if jax.local_device_count() > 1 else ()  # 4 CPU devices in tests
    assert cli.main(eval_args(work, other, "--per-persona", "5", "--mode", "pba_text", "--rows", "1",
                              "--reference-prompt", "policy", *data_parallel)) == 0
    rows = read_jsonl(other / "scores.jsonl")
    assert all(r["reference_prompt"] == r["policy_prompt"] for r in rows)
    assert "(the reference reads the policy's prompt: the reward view)" in (other / "report.md").read_text()
    assert "(the reference reads the few-shot prompt: the paper's metric)" in (full_run / "report.md").read_text()
    capsys.readouterr()
    assert cli.main(["eval", "--compare", str(full_run), str(other)]) == 0
    table = capsys.readouterr().out
    assert str(full_run) in table and str(other) in table
    assert "worst persona" in table and "Generate a friendly response." in table and "(n=5)" in table
    reads = next(line for line in table.splitlines() if line.startswith("reference reads"))
    assert reads.split()[2:] == ["the", "few-shot", "prompt", "the", "policy's", "prompt"]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Refusals must come before any model is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(interop, "load_params", refuse)


def refusal(args, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alignx: error: ")
    return err[0]


def test_refusals_come_first_and_leave_nothing(work, capsys, no_model_loads, tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p", "chosen": "c"}]))
    message = refusal(["eval", "--policy", work["policy"], "--reference", work["reference"], "--data", str(bad),
                       "--out", str(out)], capsys)
    assert "record 1" in message and "'rejected'" in message
    message = refusal(eval_args(work, out, "--mode", "pba_soft"), capsys)
    assert "--mode pba_soft needs a policy trained with a preference bridge" in message
    message = refusal(["eval", "--policy", work["policy"], "--reference", work["other_tok"], "--data",
                       str(work["data"]), "--out", str(out)], capsys)
    assert "different tokenizers" in message
    assert "--limit must be >= 1" in refusal(eval_args(work, out, "--limit", "0"), capsys)
    assert "--persona-items ugc: none of the" in refusal(eval_args(work, out, "--persona-items", "ugc"), capsys)
    assert "--history" in refusal(eval_args(work, out, "--history", "x"), capsys)
    (tmp_path / "a_file").write_text("")
    assert "a_file is a file, not a folder" in refusal(eval_args(work, tmp_path / "a_file" / "out"), capsys)
    assert not out.exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("not ours")
    assert "holds no run.json" in refusal(eval_args(work, full), capsys)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(eval_args(work, out, "--mode", "nope"))
    assert exit_info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    assert "--compare" in refusal(["eval", "--policy", work["policy"]], capsys)
    assert "no report.json" in refusal(["eval", "--compare", str(tmp_path)], capsys)


def test_other_settings_are_refused_in_an_earlier_run_folder(work, full_run, capsys, no_model_loads):
    message = refusal(eval_args(work, full_run, *LIMIT_60, "--mode", "pba_text"), capsys)
    assert "holds an evaluation with other settings (mode" in message
    message = refusal(eval_args(work, full_run, *LIMIT_60, "--reference-prompt", "policy"), capsys)
    assert 'other settings (reference_prompt: "few_shot" there, "policy" now)' in message


def test_a_folder_written_before_reference_prompt_resumes_as_few_shot(work, full_run):
    out = work["root"] / "older"
    shutil.copytree(full_run, out)
    run = json.loads((out / "run.json").read_text())
    del run["reference_prompt"]
    (out / "run.json").write_text(json.dumps(run))
    assert cli.main(eval_args(work, out, *LIMIT_60)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["timing"]["records_scored_now"] == 0 and report["accuracy"] == \
        json.loads((full_run / "report.json").read_text())["accuracy"]


def test_generate_resumes_and_judge_reports_win_tie_loss(work, capsys, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    common = ["--data", str(work["data"]), "--limit", "6", "--max-new-tokens", "6", "--batch-size", "4"]
    assert cli.main(["generate", "--model", work["policy"], *common, "--out", str(a)]) == 0
    rows = read_jsonl(a)
    assert sorted(r["index"] for r in rows) == [0, 1, 2, 40, 41, 42]
    assert all(r["response_tokens"] <= 6 and r["generation"]["temperature"] == 0.9 for r in rows)
    a.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]) + json.dumps(rows[4])[:20])  # killed mid-line
    assert cli.main(["generate", "--model", work["policy"], *common, "--out", str(a)]) == 0
    assert sorted(r["index"] for r in read_jsonl(a)) == [0, 1, 2, 40, 41, 42]
    assert cli.main(["generate", "--model", work["reference"], *common, "--out", str(b)]) == 0
    capsys.readouterr()
    message = refusal(["generate", "--model", work["reference"], *common, "--temperature", "0.5", "--out", str(b)],
                      capsys)
    assert "other settings" in message
    capsys.readouterr()
    out = tmp_path / "judged"
    assert cli.main(["judge", str(a), str(b), "--out", str(out), "--judge-model", work["reference"]]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 6 and report["win"] + report["tie"] + report["loss"] == 6
    assert {k: v["n"] for k, v in report["per_persona"].items()} == {
        "Generate a friendly response.": 3, "Generate an unfriendly response.": 3}
    assert len(read_jsonl(out / "judgments.jsonl")) == 6 and (out / "report.md").is_file()


def test_generate_one_prompt_prints_the_answer(work, capsys):
    assert cli.main(["generate", "--model", work["policy"], "--prompt", "Hello?", "--max-new-tokens", "5",
                     "--temperature", "0"]) == 0
    assert capsys.readouterr().out.endswith("\n")  # the answer (a random tiny model's may be blank), one line


class _FakeJudge(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that prefers whichever response says 'nice'."""

    seen_keys = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeJudge.seen_keys.append(self.headers.get("Authorization"))
        user = body["messages"][1]["content"]
        first = user.split("***Response A***")[1].split("***Response B***")[0]
        second = user.split("***Response B***")[1]
        verdict = "A" if "nice" in first else "B" if "nice" in second else "tie?"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_http_judge_reads_url_and_key_from_the_environment_and_never_writes_them(tmp_path, capsys, monkeypatch):
    def gen(path, responses):
        path.write_text("".join(json.dumps({"index": i, "persona": "p" if i < 2 else "q", "post": f"post {i}",
                                            "response": text}) + "\n" for i, text in enumerate(responses)))

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    gen(a, ["nice one", "nice two", "meh", "meh"])
    gen(b, ["meh", "meh", "nice three", "meh"])
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "judged"
        message = refusal(["judge", str(a), str(b), "--out", str(out), "--judge", "http"], capsys)
        assert "ALIGNX_JUDGE_URL" in message and not out.exists()
        monkeypatch.setenv("ALIGNX_JUDGE_URL", f"http://127.0.0.1:{server.server_port}/v1")
        monkeypatch.setenv("ALIGNX_JUDGE_API_KEY", "sk-secret-123")
        monkeypatch.setenv("ALIGNX_JUDGE_MODEL", "judge-model")
        assert cli.main(["judge", str(a), str(b), "--out", str(out), "--judge", "http"]) == 0
    finally:
        server.shutdown()
    report = json.loads((out / "report.json").read_text())
    assert (report["win"], report["tie"], report["loss"]) == (2, 1, 1)
    assert report["per_persona"]["p"]["win"] == 2 and report["per_persona"]["q"]["loss"] == 1
    assert report["worst_persona"] == "q" and report["judge"] == {"kind": "http", "model": "judge-model"}
    assert set(_FakeJudge.seen_keys) == {"Bearer sk-secret-123"}
    for file in out.iterdir():
        text = file.read_text()
        assert "sk-secret" not in text and "127.0.0.1" not in text


# The 135M model compiled for two lengths (~70 s): in the slow set; the hand-computed scores and the
# model's transformers parity stay in the default set.
@pytest.mark.slow
def test_scores_match_pytorch_transformers_on_psoups(shared_data_dir, tmp_path):
    """scores.jsonl of the embedded SmolLM2 on P-Soups records = transformers' GGUF model on the same
    rendered prompt (prompt ids, then the response's own ids, then EOS), within 1e-3 relative."""
    import torch
    import transformers

    out = tmp_path / "psoups"
    data_file = shared_data_dir / "psoups_friendly_unfriendly.json"
    assert cli.main(["eval", "--policy", "smollm2-135m-instruct", "--reference", "smollm2-135m-instruct",
                     "--data", str(data_file), "--out", str(out), "--per-persona", "1"]) == 0
    rows = read_jsonl(out / "scores.jsonl")
    assert len(rows) == 2 and {r["index"] for r in rows} == {0, 300}
    tokenizer = interop.load_tokenizer("smollm2-135m-instruct")
    path = interop.embedded_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    for row in rows:
        prompt = tokenizer.encode(row["policy_prompt"], add_special_tokens=False)
        if prompt[0] != tokenizer.bos_token_id:
            prompt = [tokenizer.bos_token_id] + prompt
        for key, text in (("policy_chosen_logp", row["chosen"]), ("policy_rejected_logp", row["rejected"])):
            response = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
            with torch.no_grad():
                logits = model(torch.tensor([prompt + response])).logits[0].double()
            logp = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(1, torch.tensor(response)[:, None]).sum()
            np.testing.assert_allclose(row[key], float(logp), rtol=1e-3)
            assert row[key.replace("policy", "ref")] == row[key]  # the same model, scored once
