"""keep_freed_memory: the same training steps fault in far fewer fresh pages with it.

The reference is the same steps in a process that did not call it (each case runs in a
subprocess of its own: mallopt settings last for the life of a process).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from gptforge.train.allocator import keep_freed_memory
    assert keep_freed_memory()
from gptforge import GPT, GPTConfig
torch.manual_seed(0)
model = GPT(GPTConfig.from_preset("shakespeare-char-cpu", vocab_size=65))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randint(0, 65, (12, 64)), torch.randint(0, 65, (12, 64))
for step in range(40):  # nanoGPT's CPU recipe: 4 x 128, batch 12 x 64
    if step == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(x, targets=y)[1].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_training_steps_reuse_freed_buffers_instead_of_faulting_in_new_pages() -> None:
    plain, kept = _page_faults("plain"), _page_faults("keep")
    assert plain > 3000, plain  # without it: hundreds of fresh pages per step (~1,100 measured)
    assert kept < plain / 10, (kept, plain)

