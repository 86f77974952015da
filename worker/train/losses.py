"""The preference losses as pure functions of per-sequence numbers: summed answer log-probabilities (and their
token counts) for dpo/simpo/orpo/kto, the value head's rewards for rm. The stages in worker/train/stages/ score a
batch with the model and call these; tests/worker/test_loss_oracle.py feeds the same numbers to TRL's
implementations. Each function returns per-row losses (the stage takes the mean) and the rewards it logs.
docs/training.md says, per loss, where it equals TRL's and where it differs on purpose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# ORPO's log(1 - p) needs p < 1: a per-token average log-probability is clamped to at most this (p ≤ 0.999999)
ORPO_MAX_AVG_LOGP = -1e-6


def dpo_losses(chosen_ratio: Tensor, rejected_ratio: Tensor, n_chosen: Tensor, n_rejected: Tensor, *,
               loss_type: str, beta: float, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """DPO and the variants that share its reference model. `*_ratio` = policy − reference summed answer
    log-probability, `n_*` the answer token counts (IPO's per-token normalisation). Returns the per-pair losses
    and the implicit rewards β·ratio.

    sigmoid: −(1−ε)·log σ(β·Δ) − ε·log σ(−β·Δ), Δ = chosen_ratio − rejected_ratio (ε > 0: conservative DPO);
    hinge (SLiC): max(0, 1 − β·Δ); ipo: (Δ/n − 1/(2β))², with each ratio divided by its own token count."""
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        losses = (chosen_ratio / n_chosen - rejected_ratio / n_rejected - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}")
    return losses, beta * chosen_ratio, beta * rejected_ratio


def simpo_losses(chosen: Tensor, rejected: Tensor, n_chosen: Tensor, n_rejected: Tensor, *, beta: float,
                 gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO (Meng et al. 2024), reference-free: −log σ(β·c/n_c − β·r/n_r − γ) on summed log-probabilities
    c, r; the rewards are the length-normalised β·c/n_c, β·r/n_r."""
    chosen_reward, rejected_reward = beta * chosen / n_chosen, beta * rejected / n_rejected
    return -F.logsigmoid(chosen_reward - rejected_reward - gamma), chosen_reward, rejected_reward


def log_odds(avg_logp: Tensor) -> Tensor:
    """log(p / (1 − p)) for log p = `avg_logp`, with log(1 − p) = log(−expm1(log p)) and, in it, p clamped
    below 1 (so that a certain answer gives a large finite log odds, not infinity)."""
    return avg_logp - torch.log(-torch.expm1(avg_logp.clamp(max=ORPO_MAX_AVG_LOGP)))


def orpo_losses(chosen: Tensor, rejected: Tensor, n_chosen: Tensor, n_rejected: Tensor, *,
                lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """ORPO (Hong et al. 2024): −log P(chosen answer)/n_c − λ·log σ(log odds(chosen) − log odds(rejected)),
    both on per-token average log-probabilities of the answer tokens. Rewards: λ·average log-probability."""
    chosen_avg, rejected_avg = chosen / n_chosen, rejected / n_rejected
    ratio = log_odds(chosen_avg) - log_odds(rejected_avg)
    return -chosen_avg - lam * F.logsigmoid(ratio), lam * chosen_avg, lam * rejected_avg


def chosen_nll(chosen: Tensor, n_chosen: Tensor) -> Tensor:
    """Per pair, the chosen answer's negative log-likelihood per token (DPO's sft_weight term, as LLaMA-Factory's
    ftx: a per-row average)."""
    return -chosen / n_chosen


def kto_losses(logps: Tensor, ref_logps: Tensor, kl_logps: Tensor, ref_kl_logps: Tensor, desirable: Tensor, *,
               beta: float, desirable_weight: float = 1.0,
               undesirable_weight: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """KTO (Ethayarajh et al. 2024). z = max(0, mean(kl_logps − ref_kl_logps)), detached (the KL estimate from
    mismatched prompt/completion pairs); desirable rows: w_d·(1 − σ(β(ratio − z))), undesirable rows:
    w_u·(1 − σ(β(z − ratio))), ratio = logps − ref_logps. Returns per-row losses, z and the rewards β·ratio."""
    kl = (kl_logps - ref_kl_logps).mean().clamp(min=0).detach()
    ratio = logps - ref_logps
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))),
    )
    return losses, kl, beta * ratio


def pairwise_reward_losses(chosen: Tensor, rejected: Tensor) -> Tensor:
    """The reward model's Bradley-Terry loss −log σ(r_chosen − r_rejected), per pair."""
    return -F.logsigmoid(chosen - rejected)
