"""check_config: a value of the wrong type or out of range is one ConfigError naming its key; every shipped config passes."""
import pytest

from diffusion_lab.app.config_checks import check_config
from diffusion_lab.errors import ConfigError
from tests.helpers import CONDITIONAL, compose_train, config_options


# override(s) -> (the full key the message starts with, the rest of what it must say)
BAD = {
    "trainer.max_steps=abc": ("trainer.max_steps", "='abc' must be an int"),
    "trainer.max_steps=true": ("trainer.max_steps", "=true must be an int"),  # a bool is not an int
    "trainer.max_steps=1e3": ("trainer.max_steps", "=1000.0 must be an int"),
    "trainer.max_steps=0": ("trainer.max_steps", "=0 must be -1 (no limit) or an int >= 1"),
    "optimizer.lr=-1": ("optimizer.lr", "=-1: AdamW rejects it (Invalid learning rate: -1)"),
    "optimizer.lr=abc": ("optimizer.lr", "='abc' must be a float or a Tensor"),
    "optimizer=adam optimizer.betas=[0.9,1.5]": ("optimizer.betas", "=[0.9, 1.5]: Adam rejects it (Invalid beta parameter"),
    "optimizer.weight_decay=-0.1": ("optimizer.weight_decay", "=-0.1: AdamW rejects it"),
    "+optimizer.nesterov=true": ("optimizer.nesterov", "=true: AdamW rejects it (AdamW.__init__() got an unexpected"),
    "lr_scheduler.factor=2.0": ("lr_scheduler.factor", "=2.0: ConstantLR rejects it (Constant multiplicative factor"),
    "lr_scheduler=step lr_scheduler.step_size=abc": ("lr_scheduler.step_size", "='abc' must be an int"),
    "trainer.val_check_interval=0": ("trainer.val_check_interval", "=0 must be an int >= 1"),
    # Lightning refuses every float (a fraction of an epoch) when check_val_every_n_epoch is null, as here.
    "trainer.val_check_interval=1.5": ("trainer.val_check_interval", "needs trainer.check_val_every_n_epoch set"),
    "trainer.val_check_interval=1.5 trainer.check_val_every_n_epoch=1": ("trainer.val_check_interval",
                                                                         "a float in (0, 1]"),
    "trainer.accumulate_grad_batches=0": ("trainer.accumulate_grad_batches", "=0 must be an int >= 1"),
    "trainer.log_every_n_steps=-1": ("trainer.log_every_n_steps", "=-1 must be an int >= 0"),
    "trainer.precision=bf16-fast": ("trainer.precision", "='bf16-fast' must be one of 64, 32, 16,"),
    "trainer.deterministic=maybe": ("trainer.deterministic", "='maybe' must be a bool, 'warn' or null"),
    "trainer.gradient_clip_val=abc": ("trainer.gradient_clip_val", "='abc' must be an int, a float or null"),
    "trainer=ddp trainer.strategy.start_method=thread": ("trainer.strategy.start_method",
                                                         "='thread' must be one of 'popen', 'spawn', 'fork'"),
    "trainer=slurm trainer.plugins.1.auto_requeue=abc": ("trainer.plugins[1].auto_requeue", "='abc' must be a bool"),
    # RunCheckpoint(**kwargs) passes every_n_train_steps on to Lightning's ModelCheckpoint, whose annotation counts.
    "callbacks.model_checkpoint.every_n_train_steps=abc": ("callbacks.model_checkpoint.every_n_train_steps",
                                                            "='abc' must be an int or null"),
    "callbacks.ema.decay=abc": ("callbacks.ema.decay", "='abc' must be a float"),
    "logger=wandb logger.wandb.log_model=abc": ("logger.wandb.log_model", "='abc' must be a bool or 'all'"),
    "data.batch_size=abc": ("data.batch_size", "='abc' must be an int"),
    "data.dataset.N=1.5": ("data.dataset.N", "=1.5 must be an int"),
    "sampler.steps=abc": ("sampler.steps", "='abc' must be an int"),
    "experiment=mnist_latent module.vae.ch=abc": ("module.vae.ch", "='abc' must be an int"),
    "experiment=mnist_latent +module.vae.kl_weight=abc": ("module.vae.kl_weight", "='abc' must be a float"),
    # Top-level keys are checked against the LightningModule that takes them, and named as typed (not data.seed).
    "seed=abc": ("seed", "='abc' must be an int"),
    "nonfinite=1": ("nonfinite", "=1 must be a string"),
    "num_samples=many": ("num_samples", "='many' must be an int"),
    "threads=0": ("threads", "=0 must be null or an int >= 1"),
    "matmul_precision=low": ("matmul_precision", "='low' must be null, 'highest', 'high' or 'medium'"),
}


@pytest.mark.parametrize("overrides", sorted(BAD))
def test_bad_value_is_one_line_naming_its_full_key(overrides, tmp_path):
    key, expected = BAD[overrides]
    cfg = compose_train(overrides.split(), tmp_path)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    assert message.startswith(f"{key}=") and expected in message and "\n" not in message, message


@pytest.mark.parametrize("overrides", [
    "optimizer.lr=1",  # an int where a float is annotated
    "trainer.max_steps=-1 trainer.max_epochs=3",
    "trainer.log_every_n_steps=0",  # Lightning: no step logging
    "trainer.val_check_interval=00:00:10:00",  # time-based validation
    "trainer.val_check_interval=0.5 trainer.check_val_every_n_epoch=1",
    "trainer.val_check_interval=null",
    "trainer.precision=16 trainer.deterministic=warn trainer.devices=auto",
    "trainer=ddp trainer.strategy.start_method=spawn",
    "lr_scheduler=cosine lr_scheduler.warmup_steps=0",
    "~lr_scheduler",
    "~optimizer",
])
def test_allowed_values_pass(overrides, tmp_path):
    check_config(compose_train(overrides.split(), tmp_path))


# Options composed together with what they need (as in test_framework); GPU trainers only compose here.
EXTRA = {
    ("model", "cond_mlp"): [CONDITIONAL, "data=tree"],
    ("data", "digits"): ["model=dit"], ("data", "mnist"): ["model=dit"], ("data", "fashion_mnist"): ["model=dit"],
    ("data", "cifar10"): ["model=unet"], ("data", "image_folder"): ["model=dit"], ("data", "hf"): ["model=dit"],
    ("model", "dit"): ["data=digits"], ("model", "unet"): ["data=digits"],
    ("guidance", "cfg"): [CONDITIONAL, "data=gaussian", "model=toy_unet"],
    ("module", "latent"): ["data=digits", "data.input_dims=[1,16,16]", "model=unet", "model.in_dim=4",
                           "model.channels=2"],
}
GROUPS = ["data", "model", "objective", "schedule", "sampler", "guidance", "module", "optimizer", "lr_scheduler",
          "trainer", "logger", "callbacks", "debug", "hparams_search", "experiment"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in config_options(g)])
def test_every_shipped_option_passes_unchanged(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}", *EXTRA.get((group, option), [])], tmp_path)
    check_config(cfg)

