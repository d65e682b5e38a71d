"""The Lightning internals diffusion_lab relies on (training/lightning_internals.py) exist in the installed Lightning
with the signatures used: an upgrade that changes one fails here, naming it."""
import inspect

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from diffusion_lab.training import lightning_internals as internals


def test_model_checkpoint_methods_keep_their_signatures():
    for name, params in internals.CHECKPOINT_METHODS.items():
        method = getattr(ModelCheckpoint, name, None)
        assert method is not None, f"lightning ModelCheckpoint.{name} is gone"
        assert tuple(inspect.signature(method).parameters)[1:] == params, name
    assert "_last_global_step_saved" in vars(ModelCheckpoint())
    assert tuple(inspect.signature(TQDMProgressBar._should_update).parameters)[1:] == ("current", "total")


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0]).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_state_read_through_the_internals(tmp_path):
    module = Tiny()
    assert internals.attached_trainer(module) is None  # outside a fit; module.trainer would raise
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    data = torch.utils.data.DataLoader(torch.ones(10, 1), batch_size=2)
    trainer.fit(module, data)
    assert internals.attached_trainer(module) is trainer
    assert internals.batches_done(trainer) == 3
