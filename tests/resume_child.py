"""Child process for the SIGKILL test: trains into RUN_DIR; during epoch 3 (after its first
batch) it writes MARKER and waits to be killed."""

import sys
import time
from pathlib import Path

import lightning.pytorch as pl

sys.path.insert(0, str(Path(__file__).parent))
from runs_helpers import build_graph, config, datamodule  # noqa: E402


class WaitForKill(pl.Callback):
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 2 and batch_idx == 0:
            self.marker.write_text("epoch 3")
            time.sleep(120)


if __name__ == "__main__":
    run_dir, marker = Path(sys.argv[1]), Path(sys.argv[2])
    build_graph().train(datamodule(), config(6), run_dir=run_dir, callbacks=[WaitForKill(marker)])
