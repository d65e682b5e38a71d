"""The math of diffusion_lab: schedules, samplers, guidance, parameterizations and the loss; torch only."""
from diffusion_lab.core.dpm_solver import DPMSolverSampler, sample_dpmpp
from diffusion_lab.core.guidance import ClassifierFreeGuidance, ClassifierGuidance, Guidance
from diffusion_lab.core.parameterization import (Denoiser, PredV, PredX0, Scaled, edm_coefficients, edm_to_x0, eps_to_v,
                                                 eps_to_x0, flow_to_eps, v_to_eps, x0_to_edm, x0_to_eps)
from diffusion_lab.core.samplers import (DDIMSampler, DDPMSampler, EulerSampler, GeneralizedSampler, HeunSampler,
                                         Sampler, ddim_step, ddpm_step, per_sample_generators, q_sample, randn,
                                         sample_ddim, sample_ddpm, sample_euler, sample_generalized, sample_heun,
                                         samples)
from diffusion_lab.core.schedules import (LogNormalSigma, Schedule, ScheduleCosine, ScheduleDDPM, ScheduleFlow,
                                          ScheduleKarras, ScheduleLDM, ScheduleLogLinear, ScheduleQuadratic,
                                          ScheduleSigmoid, UniformFlowTime, alpha_bar_from_sigma, sigma_from_alpha_bar,
                                          sigma_from_t, t_from_sigma)
from diffusion_lab.core.training import diffusion_loss, training_loop, training_noise

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "Guidance", "Denoiser", "PredV", "PredX0", "Scaled",
           "edm_coefficients", "edm_to_x0", "eps_to_v", "eps_to_x0", "flow_to_eps", "sigma_from_t", "t_from_sigma",
           "v_to_eps", "x0_to_edm", "x0_to_eps", "DDIMSampler", "DDPMSampler", "DPMSolverSampler", "EulerSampler",
           "GeneralizedSampler", "HeunSampler", "Sampler", "ddim_step", "ddpm_step", "per_sample_generators",
           "q_sample", "randn", "sample_ddim", "sample_ddpm", "sample_dpmpp", "sample_euler", "sample_generalized",
           "sample_heun", "samples", "LogNormalSigma", "Schedule", "ScheduleCosine", "ScheduleDDPM", "ScheduleFlow",
           "ScheduleKarras", "ScheduleLDM", "ScheduleLogLinear", "ScheduleQuadratic", "ScheduleSigmoid",
           "UniformFlowTime", "alpha_bar_from_sigma", "sigma_from_alpha_bar", "diffusion_loss", "training_loop",
           "training_noise"]
