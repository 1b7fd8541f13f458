"""The instruction loss mask covers exactly the response tokens (and the end-of-text)."""

from __future__ import annotations

import torch

from gptforge.finetune.instruct import InstructTask, encode_conversation
from gptforge.model.gpt import IGNORE_INDEX
from gptforge.templates import Template
from gptforge.tokenizer.char import CharTokenizer

M = IGNORE_INDEX


def _tok() -> CharTokenizer:
    # ids: the sorted alphabet below, then <|endoftext|>
    return CharTokenizer.train(" \n<>|abcdehinorstuy", specials=["<|endoftext|>"])


def test_chat_mask_is_exactly_the_response() -> None:
    tok = _tok()
    eot = tok.eot_id
    tpl = Template(name="chat")
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    ex, too_long = encode_conversation(tok, tpl, msgs, max_length=100)
    assert not too_long
    prompt = "<|user|>\nhi<|end|>\n<|assistant|>\n"
    response = "yo<|end|>"
    ids = [tok.stoi[c] for c in prompt] + [tok.stoi[c] for c in response] + [eot]
    # hand-built: inputs drop the last token; targets shift by one, prompt targets masked
    n_prompt, n_resp = len(prompt), len(response) + 1
    expected_targets = [M] * (n_prompt - 1) + ids[n_prompt:]
    assert ex.inputs == ids[:-1]
    assert ex.targets == expected_targets
    assert sum(t != M for t in ex.targets) == n_resp


def test_multi_turn_masks_every_assistant_turn_only() -> None:
    tok = _tok()
    tpl = Template(name="chat")
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    ex, _ = encode_conversation(tok, tpl, msgs, max_length=200)
    trained = tok.decode([t for t in ex.targets if t != M])
    assert trained == "yo<|end|><|endoftext|>ciao<|end|><|endoftext|>"


def test_truncate_and_skip() -> None:
    tok = _tok()
    tpl = Template(name="chat")
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo there"}]
    full, _ = encode_conversation(tok, tpl, msgs, max_length=100)
    cut, too_long = encode_conversation(tok, tpl, msgs, max_length=len(full.inputs) - 3)
    assert too_long and cut.inputs == full.inputs[: len(full.inputs) - 3]
    assert cut.targets == full.targets[: len(cut.inputs)]
    skipped, too_long = encode_conversation(tok, tpl, msgs, max_length=len(full.inputs) - 3, on_too_long="skip")
    assert too_long and skipped is None
    # a cut that leaves no response token drops the example
    none_left, _ = encode_conversation(tok, tpl, msgs, max_length=5)
    assert none_left is None


def test_collate_pads_labels_with_ignore_index() -> None:
    tok = _tok()
    tpl = Template(name="chat")
    a, _ = encode_conversation(tok, tpl, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], 100)
    b, _ = encode_conversation(tok, tpl, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo yo yo"}], 100)
    batch = InstructTask(pad_id=tok.eot_id).collate([a, b])
    T = len(b.inputs)
    assert batch["input_ids"].shape == (2, T)
    assert batch["labels"][0].tolist() == a.targets + [M] * (T - len(a.targets))
    assert batch["attention_mask"][0].tolist() == [1] * len(a.inputs) + [0] * (T - len(a.inputs))
    assert torch.equal(batch["labels"][1], torch.tensor(b.targets))


def test_task_loss_equals_full_forward_loss() -> None:
    """The task scores only target positions; GPT.forward with ignore_index is the reference."""
    from gptforge import GPT, GPTConfig

    tok = _tok()
    tpl = Template(name="chat")
    convs = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        [{"role": "user", "content": "bye there"}, {"role": "assistant", "content": "ciao ciao"}],
    ]
    examples = [encode_conversation(tok, tpl, c, 100)[0] for c in convs]
    task = InstructTask(pad_id=tok.eot_id)
    batch = task.collate(examples)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    loss, n = task.loss(model, batch)
    _, ref = model(batch["input_ids"], batch["labels"])
    torch.testing.assert_close(loss, ref)
    assert n == sum(len(ex.targets) - ex.targets.count(M) for ex in examples)
