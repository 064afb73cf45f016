"""Child process for the stage-2 kill test: trains the staged pipeline into RUN_DIR; during
epoch 2 of stage ``selector`` (after its first batch) it writes MARKER and waits to be killed."""

import sys
import time
from pathlib import Path

import lightning.pytorch as pl

sys.path.insert(0, str(Path(__file__).parent))
from stages_helpers import staged_pipeline  # noqa: E402


class WaitForKill(pl.Callback):
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.frozen and trainer.current_epoch == 1 and batch_idx == 0:
            self.marker.write_text("stage selector, epoch 2")
            time.sleep(120)


if __name__ == "__main__":
    run_dir, marker = Path(sys.argv[1]), Path(sys.argv[2])
    pipeline = staged_pipeline()
    pipeline.graph.train(pipeline.datamodule, pipeline.training, run_dir=run_dir, callbacks=[WaitForKill(marker)])
