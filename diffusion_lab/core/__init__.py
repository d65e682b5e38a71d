"""The math of diffusion_lab: schedules, samplers, guidance, objectives and the loss; torch only."""
from diffusion_lab.core.dpm_solver import sample_dpmpp
from diffusion_lab.core.guidance import AutoGuidance, ClassifierFreeGuidance, ClassifierGuidance, Guidance
from diffusion_lab.core.objectives import (EDMWeight, MinSNRWeight, Objective, PredEDM, PredEps, PredFlow, PredV, PredX0,
                                           edm_coefficients, edm_to_x0, eps_to_v, eps_to_x0, flow_to_eps, v_to_eps,
                                           x0_to_edm, x0_to_eps)
from diffusion_lab.core.noise import NoiseStreams
from diffusion_lab.core.samplers import (Sampler, ddim_step, ddpm_step, in_eval_mode, prepare, q_sample, randn,
                                         sample_ddim, sample_ddpm, sample_euler, sample_euler_ancestral,
                                         sample_generalized, sample_heun, samples)
from diffusion_lab.core.schedules import (LogNormalSigma, Schedule, ScheduleCosine, ScheduleDDPM, ScheduleFlow,
                                          ScheduleKarras, ScheduleLDM, ScheduleLogLinear, ScheduleQuadratic,
                                          ScheduleSigmoid, UniformFlowTime, alpha_bar_from_sigma, sigma_from_alpha_bar,
                                          sigma_from_t, t_from_sigma)
from diffusion_lab.core.training import diffusion_loss, training_loop, training_noise

__all__ = ["AutoGuidance", "ClassifierFreeGuidance", "ClassifierGuidance", "Guidance", "EDMWeight", "MinSNRWeight", "Objective",
           "PredEDM", "PredEps", "PredFlow", "PredV", "PredX0",
           "edm_coefficients", "edm_to_x0", "eps_to_v", "eps_to_x0", "flow_to_eps", "sigma_from_t", "t_from_sigma",
           "v_to_eps", "x0_to_edm", "x0_to_eps", "NoiseStreams", "Sampler", "ddim_step", "ddpm_step",
           "in_eval_mode", "prepare", "q_sample", "randn", "sample_ddim", "sample_ddpm", "sample_dpmpp", "sample_euler",
           "sample_euler_ancestral", "sample_generalized",
           "sample_heun", "samples", "LogNormalSigma", "Schedule", "ScheduleCosine", "ScheduleDDPM", "ScheduleFlow",
           "ScheduleKarras", "ScheduleLDM", "ScheduleLogLinear", "ScheduleQuadratic", "ScheduleSigmoid",
           "UniformFlowTime", "alpha_bar_from_sigma", "sigma_from_alpha_bar", "diffusion_loss", "training_loop",
           "training_noise"]
