"""Optional metric sinks: TensorBoard and Weights & Biases.

Each sink receives exactly the records that go to ``metrics.jsonl`` (train lines
and eval lines) and writes every numeric value under its own key, at the
record's ``step``. They plug into :data:`gptforge.train.metrics.SINK_FACTORIES`
when this module is imported (the loop imports it); the loop itself knows
nothing about them. Both packages are optional extras and imported only when
the sink is asked for:

    log.tensorboard true   ->  RUN/tensorboard/ event files   pip install 'gptforge[tb]'
    log.wandb true         ->  a W&B run in RUN/wandb/        pip install 'gptforge[wandb]'

W&B honours its own environment variables; ``WANDB_MODE=offline`` writes the run
to disk only (upload it later with ``wandb sync RUN/wandb/offline-run-*``).
"""

from __future__ import annotations

import logging
import math
import secrets
from pathlib import Path
from typing import Any

from gptforge.errors import ConfigError
from gptforge.train.metrics import SINK_FACTORIES, Sink

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"


def numeric_items(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record, without ``step`` (the x axis); booleans and None dropped."""
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = v
    return out


class TensorBoardSink:
    """Scalars to ``torch.utils.tensorboard.SummaryWriter`` (one tag per record key)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "log.tensorboard needs the tensorboard package; install it with: pip install 'gptforge[tb]' "
                "(or drop --log.tensorboard)"
            ) from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for key, value in numeric_items(record).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a record is written every log.interval steps: cheap, and nothing is lost

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Records to a Weights & Biases run; the run id is kept in ``RUN/wandb_run_id`` so a resume continues it."""

    def __init__(self, run_dir: str | Path, project: str, config: dict[str, Any] | None = None,
                 wandb_module: Any = None) -> None:
        wandb = wandb_module
        if wandb is None:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "log.wandb needs the wandb package; install it with: pip install 'gptforge[wandb]' "
                    "(or drop --log.wandb)"
                ) from None
        run_dir = Path(run_dir)
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else None
        if run_id is None:
            run_id = secrets.token_hex(4)  # W&B ids: lowercase letters and digits
            id_file.write_text(run_id + "\n", encoding="utf-8")
        self.run = wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow",
                              dir=str(run_dir), config=config or {})

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(numeric_items(record), step=int(record.get("step", 0)))

    def close(self) -> None:
        self.run.finish()


def _run_config(run_dir: Path) -> dict[str, Any]:
    from gptforge.io import read_yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    loaded = read_yaml(path, what="run config")
    return loaded if isinstance(loaded, dict) else {}


def tensorboard_factory(log_cfg: Any, run_dir: Path) -> Sink | None:
    if not getattr(log_cfg, "tensorboard", False):
        return None
    return TensorBoardSink(run_dir / TENSORBOARD_DIR)


def wandb_factory(log_cfg: Any, run_dir: Path) -> Sink | None:
    if not getattr(log_cfg, "wandb", False):
        return None
    return WandbSink(run_dir, getattr(log_cfg, "wandb_project", "gptforge"), _run_config(run_dir))


for _factory in (tensorboard_factory, wandb_factory):
    if _factory not in SINK_FACTORIES:
        SINK_FACTORIES.append(_factory)

__all__ = ["TensorBoardSink", "WandbSink", "numeric_items", "tensorboard_factory", "wandb_factory"]
