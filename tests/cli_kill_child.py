"""Child process for the CLI kill test: ``cuvis-graph train ARGS...`` that, during epoch 3 (after
its first batch), writes MARKER and waits to be killed. Usage: ``python cli_kill_child.py MARKER ARGS...``."""

import sys
import time
from pathlib import Path

from cuvis_graph.cli.app import main
from cuvis_graph.train.lightning import GraphModule

marker = Path(sys.argv[1])
on_batch_end = GraphModule.on_train_batch_end


def wait_for_kill(self, outputs, batch, batch_idx):
    on_batch_end(self, outputs, batch, batch_idx)
    if self.trainer.current_epoch == 2 and batch_idx == 0:
        marker.write_text("epoch 3")
        time.sleep(120)


GraphModule.on_train_batch_end = wait_for_kill
sys.exit(main(sys.argv[2:]))
