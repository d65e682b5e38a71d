"""The math of diffusion_lab: schedules, samplers, guidance, parameterizations and the loss; torch only."""
from diffusion_lab.core.guidance import ClassifierFreeGuidance, ClassifierGuidance, Guidance
from diffusion_lab.core.parameterization import (Denoiser, PredV, PredX0, Scaled, eps_to_v, eps_to_x0, v_to_eps,
                                                 x0_to_eps)
from diffusion_lab.core.samplers import (DDIMSampler, DDPMSampler, EulerSampler, GeneralizedSampler, HeunSampler,
                                         Sampler, ddim_step, ddpm_step, per_sample_generators, q_sample, randn,
                                         sample_ddim, sample_ddpm, sample_euler, sample_generalized, sample_heun,
                                         samples)
from diffusion_lab.core.schedules import (Schedule, ScheduleCosine, ScheduleDDPM, ScheduleKarras, ScheduleLDM,
                                          ScheduleLogLinear, ScheduleQuadratic, ScheduleSigmoid,
                                          alpha_bar_from_sigma, sigma_from_alpha_bar)
from diffusion_lab.core.training import diffusion_loss, training_loop, training_noise

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "Guidance", "Denoiser", "PredV", "PredX0", "Scaled",
           "eps_to_v", "eps_to_x0", "v_to_eps", "x0_to_eps", "DDIMSampler", "DDPMSampler", "EulerSampler",
           "GeneralizedSampler", "HeunSampler", "Sampler", "ddim_step", "ddpm_step", "per_sample_generators", "q_sample",
           "randn", "sample_ddim", "sample_ddpm", "sample_euler", "sample_generalized", "sample_heun", "samples",
           "Schedule", "ScheduleCosine", "ScheduleDDPM", "ScheduleKarras", "ScheduleLDM", "ScheduleLogLinear",
           "ScheduleQuadratic", "ScheduleSigmoid", "alpha_bar_from_sigma", "sigma_from_alpha_bar", "diffusion_loss",
           "training_loop", "training_noise"]
