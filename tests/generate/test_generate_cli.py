"""`gptforge generate` and `gptforge chat` through the CLI: output equals the library, bad input
gets one clear line and exit code 2."""

from __future__ import annotations

import pytest

from gptforge.generate.engine import GenerationConfig
from gptforge.generate.text import generate_text, generate_texts
from tests.generate.gen_helpers import tiny_gpt


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from gptforge.model.loading import save_model
    from gptforge.tokenizer import load_tokenizer

    try:
        tok = load_tokenizer("gpt2")
    except Exception as e:
        pytest.skip(f"gpt2 tokenizer not available: {e}")
    model = tiny_gpt(vocab_size=tok.vocab_size, block_size=64)
    out = tmp_path_factory.mktemp("gen") / "model"
    save_model(model, out, tokenizer=tok)
    return out, model, tok


def _one_error_line(res) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


def test_cli_greedy_output_equals_library(cli, model_dir) -> None:
    path, model, tok = model_dir
    expected = generate_text(model, tok, "Hello world", GenerationConfig(max_new_tokens=20, temperature=0))
    res = cli("generate", "--model", str(path), "--prompt", "Hello world", "--max-new-tokens", "20",
              "--temperature", "0", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert res.stdout == expected + "\n"


def test_cli_seeded_samples_and_overflowing_prompt(cli, model_dir) -> None:
    """Seeded sampling, 2 samples (the non-streaming path), a prompt longer than the context."""
    path, model, tok = model_dir
    long_prompt = "All the world's a stage, and all the men and women merely players. " * 12  # > 64 tokens
    assert len(tok.encode(long_prompt)) > model.config.block_size
    cfg = GenerationConfig(max_new_tokens=30, temperature=0.9, top_k=50, top_p=0.95, seed=3, num_samples=2)
    expected = generate_texts(model, tok, [long_prompt], cfg)
    res = cli("generate", "--model", str(path), "--prompt", long_prompt, "--max-new-tokens", "30",
              "--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--seed", "3", "--num-samples", "2")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "".join(f"----- sample {i} -----\n{t}\n" for i, t in enumerate(expected))


def test_cli_empty_prompt_starts_from_end_of_text(cli, model_dir) -> None:
    path, model, tok = model_dir
    res = cli("generate", "--model", str(path), "--prompt", "", "--max-new-tokens", "5", "--temperature", "0")
    assert res.returncode == 0, res.stderr
    assert res.stdout == generate_text(model, tok, "", GenerationConfig(max_new_tokens=5, temperature=0)) + "\n"


@pytest.mark.parametrize(
    "flags, word",
    [(["--temperature", "-1"], "temperature"), (["--top-p", "0"], "top_p"), (["--top-p", "1.5"], "top_p"),
     (["--top-k", "0"], "top_k")],
)
def test_cli_bad_sampling_options(cli, model_dir, flags: list[str], word: str) -> None:
    path, _, _ = model_dir
    line = _one_error_line(cli("generate", "--model", str(path), "--prompt", "x", *flags))
    assert word in line


def test_cli_path_without_a_model(cli, tmp_path) -> None:
    line = _one_error_line(cli("generate", "--model", str(tmp_path), "--prompt", "x"))
    assert "no model" in line


@pytest.fixture(scope="module")
def chat_model_dir(model_dir, tmp_path_factory):
    templates = pytest.importorskip("gptforge.templates")
    from gptforge.model.loading import save_model

    _, model, tok = model_dir
    out = tmp_path_factory.mktemp("chat") / "model"
    template = templates.make_template("chat")
    save_model(model, out, tokenizer=tok, extra_config={"template": template.to_dict()})
    return out, model, tok, template


def test_cli_chat_with_template(cli, chat_model_dir) -> None:
    path, _, _, _ = chat_model_dir
    res = cli("chat", "--model", str(path), "--max-new-tokens", "6", "--temperature", "0",
              input="hello there\n/reset\nhi again\n/quit\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("bot> ") == 2
    assert "(conversation forgotten)" in res.stdout
    assert "template 'chat'" in res.stderr


def test_generate_chat_template_flag(model_dir, chat_model_dir, capsys) -> None:
    """In-process CLI call: --chat-template renders the prompt as one user message."""
    import logging

    from gptforge.cli.main import main as cli_main

    def main(argv: list[str]) -> int:  # main() sets up the gptforge logger: undo it for other tests
        logger = logging.getLogger("gptforge")
        saved = (logger.handlers[:], logger.level, logger.propagate)
        try:
            return cli_main(argv)
        finally:
            logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]

    path, model, tok, template = chat_model_dir
    cfg = GenerationConfig(max_new_tokens=12, temperature=0, stop_strings=list(template.stop_strings))
    expected = generate_text(model, tok, template.render([{"role": "user", "content": "Hi"}]), cfg)
    assert main(["generate", "--model", str(path), "--prompt", "Hi", "--chat-template", "--max-new-tokens", "12",
                 "--temperature", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", "--model", str(model_dir[0]), "--prompt", "Hi", "--chat-template"]) == 2
    assert "no chat template" in capsys.readouterr().err
