"""The Lightning layer: the LightningModule, the DataModule and the callbacks."""
from diffusion_lab.training.callbacks import EMA, SampleImages
from diffusion_lab.training.checkpointing import AtomicCheckpointIO, RunCheckpoint, RunInterrupted
from diffusion_lab.training.datamodule import DiffusionDataModule, ResumableBatchSampler
from diffusion_lab.training.evaluation import SampleQuality
from diffusion_lab.training.latent import LatentDiffusionModule
from diffusion_lab.training.lr import WarmupCosine
from diffusion_lab.training.module import DiffusionModule
from diffusion_lab.training.progress import LearningRateMonitor, StepProgressBar, step_progress_bar
from diffusion_lab.training.summary import RunSummary
