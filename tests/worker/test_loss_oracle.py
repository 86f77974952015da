"""TRL as the oracle: each stage loss of worker/train/losses.py gets the same log-probabilities (or rewards) as
TRL's implementation of that loss, and the two must agree to 1e-5, over random batches, several betas and edge
values (margins of 0, tiny and huge). Where ours differs on purpose (docs/training.md, "Where our losses differ
from TRL's"), the test checks the documented relation instead.

TRL's losses are methods of its trainers and read a few trainer attributes. Building a real trainer would
tokenise a dataset and load a model, so each test calls the unbound method with a stand-in `self` that holds
only the attributes that method reads (`trl_self`), and, where the method runs the model itself (DPO, KTO,
RewardTrainer), a stand-in model that returns the chosen per-token log-probabilities or rewards in the output
fields TRL reads (`TokenTable`, `FixedRewards`). That TRL reads no other attribute is part of what is tested: a
TRL release that reads more fails here with an AttributeError and this file is updated with it.

One test also checks the step before the losses on a real (random) Llama: our per-sequence answer
log-probabilities equal those of TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.kto_trainer import KTOTrainer
from trl.trainer.reward_trainer import RewardTrainer
from trl.trainer.utils import add_fused_lm_head

from worker.train.losses import (
    ORPO_MAX_AVG_LOGP,
    chosen_nll,
    dpo_losses,
    kto_losses,
    orpo_losses,
    pairwise_reward_losses,
    simpo_losses,
)
from worker.train.stages.base import sequence_logps

with warnings.catch_warnings():  # "trl.experimental is unstable": these tests pin what it computes
    warnings.simplefilter("ignore")
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

Tensor = torch.Tensor
BETAS = [0.01, 0.1, 0.5, 2.0, 10.0]
SEEDS = [0, 1, 2]
# Per-row differences of summed log-probabilities (chosen minus rejected) at the edges: exactly 0, tiny, huge.
EDGE_MARGINS = [0.0, 1e-6, -1e-6, 1e-3, 50.0, -50.0, 1e3, -1e3]


def assert_equal(actual: Tensor, expected: Tensor | float) -> None:
    """Equal to 1e-5 (absolute, or relative for large values)."""
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=1e-5, atol=1e-5)


def trl_self(**config: Any) -> SimpleNamespace:
    """A stand-in for a TRL trainer's `self`: the config attributes the loss reads, single-process accelerate
    (gathers are the identity), and the metric stores the loss methods write to."""
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=accelerator,
                           _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                           _total_train_tokens=0, _tp_size=1, aux_loss_enabled=False, **config)


class TokenTable:
    """A stand-in for a model patched with TRL's fused LM head: token id i has log-probability table[i] wherever
    its label is not -100 (0 elsewhere, as the fused head returns); the other per-token outputs are zeros."""

    def __init__(self, table: Tensor) -> None:
        self.table = table

    def __call__(self, input_ids: Tensor, labels: Tensor, fused_lm_head: bool, **_: Any) -> SimpleNamespace:
        assert fused_lm_head
        log_probs = self.table[input_ids[:, 1:]].masked_fill(labels[:, 1:] == -100, 0.0)
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
                               log_sum_sq_probs=zeros, aux_loss=None)


class FixedRewards:
    """A stand-in for a one-output sequence-classification model: returns the given rewards as its logits."""

    def __init__(self, rewards: Tensor) -> None:
        self.rewards = rewards

    def __call__(self, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.rewards.unsqueeze(-1))


class Sequences:
    """Rows of [prompt | answer | padding] whose answer tokens have chosen log-probabilities: every position has
    its own token id, so a `TokenTable` returns exactly these numbers. `offset` keeps two sets' ids apart."""

    def __init__(self, answer_logps: list[Tensor], prompt_lengths: list[int], offset: int = 0) -> None:
        width = max(p + len(a) for p, a in zip(prompt_lengths, answer_logps, strict=True)) + 1  # ≥ 1 pad
        rows = len(answer_logps)
        self.input_ids = torch.arange(offset, offset + rows * width).view(rows, width)
        self.attention_mask = torch.zeros(rows, width, dtype=torch.long)
        self.completion_mask = torch.zeros(rows, width, dtype=torch.long)
        self.table_entries: dict[int, float] = {}
        for row, (prompt, logps) in enumerate(zip(prompt_lengths, answer_logps, strict=True)):
            end = prompt + len(logps)
            self.attention_mask[row, :end] = 1
            self.completion_mask[row, prompt:end] = 1
            for position, value in zip(range(prompt, end), logps.tolist(), strict=True):
                self.table_entries[int(self.input_ids[row, position])] = value
        self.sums = torch.stack([logps.sum() for logps in answer_logps])
        self.counts = torch.tensor([float(len(logps)) for logps in answer_logps])


def token_table(*sets: Sequences) -> TokenTable:
    size = max(int(s.input_ids.max()) for s in sets) + 1
    table = torch.zeros(size)
    for sequences in sets:
        for token, value in sequences.table_entries.items():
            table[token] = value
    return TokenTable(table)


def random_answers(generator: torch.Generator, rows: int, scale: float = 1.0) -> list[Tensor]:
    """Per-token answer log-probabilities (< 0) of 1-12 tokens per row."""
    lengths = torch.randint(1, 13, (rows,), generator=generator).tolist()
    return [-(torch.rand(n, generator=generator) * 3 * scale + 1e-3) for n in lengths]


def answers_with_sums(sums: Tensor, lengths: list[int]) -> list[Tensor]:
    """Answers whose summed log-probability is exactly `sums[i]`, spread evenly over `lengths[i]` tokens."""
    return [torch.full((n,), float(total) / n) for total, n in zip(sums.tolist(), lengths, strict=True)]


def prompts(generator: torch.Generator, rows: int) -> list[int]:
    return torch.randint(1, 6, (rows,), generator=generator).tolist()


# --- DPO: sigmoid, hinge, ipo (DPOTrainer._compute_loss) ----------------------------------------------------


def dpo_batch(chosen: Sequences, rejected: Sequences, ref_chosen: Tensor, ref_rejected: Tensor) -> dict[str, Tensor]:
    """DPOTrainer's batch: chosen rows then rejected rows, padded to one width, with precomputed references."""
    width = max(chosen.input_ids.size(1), rejected.input_ids.size(1))

    def widen(tensor: Tensor) -> Tensor:
        return torch.nn.functional.pad(tensor, (0, width - tensor.size(1)))

    def both(name: str) -> Tensor:
        return torch.cat([widen(getattr(chosen, name)), widen(getattr(rejected, name))])

    return {"input_ids": both("input_ids"), "attention_mask": both("attention_mask"),
            "completion_mask": both("completion_mask"), "ref_chosen_logps": ref_chosen,
            "ref_rejected_logps": ref_rejected}


def trl_dpo(loss_types: list[str], beta: float, chosen: Sequences, rejected: Sequences, ref_chosen: Tensor,
            ref_rejected: Tensor, loss_weights: list[float] | None = None) -> tuple[float, dict[str, float]]:
    """DPOTrainer._compute_loss with precomputed reference log-probabilities; (loss, logged metrics)."""
    trainer = trl_self(beta=beta, loss_types=loss_types, loss_weights=loss_weights or [1.0] * len(loss_types),
                       ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", use_weighting=False,
                       label_smoothing=0.0)
    model = token_table(chosen, rejected)
    loss = DPOTrainer._compute_loss(trainer, model, dpo_batch(chosen, rejected, ref_chosen, ref_rejected),  # type: ignore[arg-type]
                                    return_outputs=False)
    return float(loss), {key: values[-1] for key, values in trainer._metrics["train"].items()}


def ours_dpo(loss_type: str, beta: float, chosen: Sequences, rejected: Sequences, ref_chosen: Tensor,
             ref_rejected: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    return dpo_losses(chosen.sums - ref_chosen, rejected.sums - ref_rejected, chosen.counts, rejected.counts,
                      loss_type=loss_type, beta=beta, label_smoothing=label_smoothing)


def random_pairs(seed: int, rows: int = 6) -> tuple[Sequences, Sequences, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    chosen = Sequences(random_answers(generator, rows), prompts(generator, rows))
    rejected = Sequences(random_answers(generator, rows), prompts(generator, rows), offset=10_000)
    ref_chosen = chosen.sums + torch.randn(rows, generator=generator) * 2
    ref_rejected = rejected.sums + torch.randn(rows, generator=generator) * 2
    return chosen, rejected, ref_chosen, ref_rejected


def edge_pairs(margin: float, lengths: tuple[int, int] = (3, 5)) -> tuple[Sequences, Sequences, Tensor, Tensor]:
    """One pair whose log-ratio difference Δ = (c − ref_c) − (r − ref_r) is `margin`."""
    chosen = Sequences(answers_with_sums(torch.tensor([-4.0]), [lengths[0]]), [2])
    rejected = Sequences(answers_with_sums(torch.tensor([-6.0]), [lengths[1]]), [3], offset=10_000)
    return chosen, rejected, torch.tensor([-4.0 - margin]), torch.tensor([-6.0])


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", SEEDS)
def test_dpo_loss_and_rewards_equal_trl_dpo_trainer_on_random_batches(loss_type: str, beta: float, seed: int) -> None:
    """Stand-in `self` for DPOTrainer._compute_loss (TRL's only implementation of these losses)."""
    chosen, rejected, ref_chosen, ref_rejected = random_pairs(seed)
    losses, chosen_reward, rejected_reward = ours_dpo(loss_type, beta, chosen, rejected, ref_chosen, ref_rejected)
    trl_loss, metrics = trl_dpo([loss_type], beta, chosen, rejected, ref_chosen, ref_rejected)
    assert_equal(losses.mean(), trl_loss)
    assert_equal(chosen_reward.mean(), torch.tensor(metrics["rewards/chosen"]))
    assert_equal(rejected_reward.mean(), torch.tensor(metrics["rewards/rejected"]))


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 10.0])
@pytest.mark.parametrize("margin", EDGE_MARGINS)
def test_dpo_loss_equals_trl_dpo_trainer_at_edge_margins(loss_type: str, beta: float, margin: float) -> None:
    """Stand-in `self` for DPOTrainer._compute_loss; one pair per batch, so the per-pair loss is compared."""
    pair = edge_pairs(margin)
    losses, _, _ = ours_dpo(loss_type, beta, *pair)
    trl_loss, _ = trl_dpo([loss_type], beta, *pair)
    assert torch.isfinite(losses).all()
    assert_equal(losses.mean(), trl_loss)


@pytest.mark.parametrize("smoothing", [0.05, 0.2, 0.45])
@pytest.mark.parametrize("seed", SEEDS)
def test_conservative_dpo_is_the_smoothed_mix_of_trl_sigmoid_and_its_swapped_pair(smoothing: float, seed: int) -> None:
    """Documented difference: TRL's DPOTrainer has no label smoothing for `sigmoid`; ours (cDPO) equals
    (1−ε)·TRL(chosen, rejected) + ε·TRL(rejected, chosen). Stand-in `self` for DPOTrainer._compute_loss."""
    chosen, rejected, ref_chosen, ref_rejected = random_pairs(seed)
    beta = 0.5
    losses, _, _ = ours_dpo("sigmoid", beta, chosen, rejected, ref_chosen, ref_rejected, label_smoothing=smoothing)
    straight, _ = trl_dpo(["sigmoid"], beta, chosen, rejected, ref_chosen, ref_rejected)
    swapped, _ = trl_dpo(["sigmoid"], beta, rejected, chosen, ref_rejected, ref_chosen)
    expected = (1 - smoothing) * straight + smoothing * swapped
    assert_equal(losses.mean(), torch.tensor(expected))
    assert abs(losses.mean().item() - straight) > 1e-4  # the smoothing changed something


def test_dpo_sft_weight_equals_trl_sft_loss_type_per_pair() -> None:
    """Documented difference: our sft_weight term is each chosen answer's per-token NLL averaged over pairs (as
    LLaMA-Factory's ftx); TRL's `sft` loss type averages over all chosen tokens of the batch. With answers of
    equal length they agree; otherwise ours is the mean of TRL's over one-pair batches. Stand-in `self` for
    DPOTrainer._compute_loss with loss_type ["sigmoid", "sft"], loss_weights [1, w]."""
    chosen, rejected, ref_chosen, ref_rejected = random_pairs(5)
    assert len(set(chosen.counts.tolist())) > 1  # lengths differ: the two averages differ
    weight = 0.7
    losses, _, _ = ours_dpo("sigmoid", 0.1, chosen, rejected, ref_chosen, ref_rejected)
    ours = (losses + weight * chosen_nll(chosen.sums, chosen.counts)).mean()
    per_pair = []
    for row in range(len(chosen.sums)):
        one_chosen = Sequences([chosen_answer(chosen, row)], [2])
        one_rejected = Sequences([chosen_answer(rejected, row)], [2], offset=10_000)
        loss, _ = trl_dpo(["sigmoid", "sft"], 0.1, one_chosen, one_rejected, ref_chosen[row:row + 1],
                          ref_rejected[row:row + 1], loss_weights=[1.0, weight])
        per_pair.append(loss)
    assert_equal(ours, torch.tensor(per_pair).mean())
    batch_loss, _ = trl_dpo(["sigmoid", "sft"], 0.1, chosen, rejected, ref_chosen, ref_rejected,
                            loss_weights=[1.0, weight])
    assert abs(batch_loss - ours.item()) > 1e-4  # the batch-level token average is a different number


def chosen_answer(sequences: Sequences, row: int) -> Tensor:
    """Row `row`'s answer log-probabilities, read back from the table."""
    ids = sequences.input_ids[row][sequences.completion_mask[row].bool()]
    return torch.tensor([sequences.table_entries[int(token)] for token in ids])


# --- SimPO (CPOTrainer.cpo_loss, loss_type="simpo") ---------------------------------------------------------


def trl_simpo(beta: float, gamma: float, chosen_avg: Tensor, rejected_avg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CPOTrainer.cpo_loss with a stand-in `self`; TRL feeds it per-token average log-probabilities."""
    trainer = trl_self(beta=beta, simpo_gamma=gamma, alpha=0.0, label_smoothing=0.0, loss_type="simpo")
    return CPOTrainer.cpo_loss(trainer, chosen_avg, rejected_avg)  # type: ignore[arg-type]


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.6])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", SEEDS)
def test_simpo_loss_and_rewards_equal_trl_cpo_simpo(gamma: float, beta: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    rows = 6
    chosen, rejected = -torch.rand(rows, generator=generator) * 40, -torch.rand(rows, generator=generator) * 40
    n_chosen = torch.randint(1, 30, (rows,), generator=generator).float()
    n_rejected = torch.randint(1, 30, (rows,), generator=generator).float()
    ours = simpo_losses(chosen, rejected, n_chosen, n_rejected, beta=beta, gamma=gamma)
    theirs = trl_simpo(beta, gamma, chosen / n_chosen, rejected / n_rejected)
    for mine, trl in zip(ours, theirs, strict=True):
        assert_equal(mine, trl)


@pytest.mark.parametrize("beta", [0.1, 2.0, 10.0])
@pytest.mark.parametrize("margin", EDGE_MARGINS)
def test_simpo_loss_equals_trl_cpo_simpo_at_edge_margins(beta: float, margin: float) -> None:
    """The margin here is between per-token averages: β·margin − γ crosses 0 for some of these."""
    chosen_avg = torch.tensor([-2.0 + margin, -2.0, -1e-4])
    rejected_avg = torch.tensor([-2.0, -2.0 - margin, -1e-4 - abs(margin)])
    counts = torch.tensor([4.0, 7.0, 1.0])
    ours, _, _ = simpo_losses(chosen_avg * counts, rejected_avg * counts, counts, counts, beta=beta, gamma=0.5)
    theirs, _, _ = trl_simpo(beta, 0.5, chosen_avg, rejected_avg)
    assert torch.isfinite(ours).all()
    assert_equal(ours, theirs)


# --- ORPO (ORPOTrainer.odds_ratio_loss) ---------------------------------------------------------------------


def trl_odds_ratio(lam: float, chosen_avg: Tensor, rejected_avg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ORPOTrainer.odds_ratio_loss with a stand-in `self`: (λ·log σ(log odds ratio), chosen, rejected rewards).
    TRL's full loss is its NLL minus the mean of the first."""
    trainer = trl_self(beta=lam)
    losses, chosen_rewards, rejected_rewards, _, _ = ORPOTrainer.odds_ratio_loss(trainer, chosen_avg, rejected_avg)  # type: ignore[arg-type]
    return losses, chosen_rewards, rejected_rewards


@pytest.mark.parametrize("lam", [0.05, 0.1, 1.0, 5.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_orpo_loss_is_answer_nll_minus_trl_odds_ratio_term(lam: float, seed: int) -> None:
    """Documented difference: TRL's ORPO NLL covers the prompt and the answer, averaged over the batch's tokens;
    ours covers the answer tokens, per pair. The odds-ratio term and the rewards equal TRL's."""
    generator = torch.Generator().manual_seed(seed)
    rows = 8
    chosen_avg = -torch.rand(rows, generator=generator) * 4 - 1e-3
    rejected_avg = -torch.rand(rows, generator=generator) * 4 - 1e-3
    counts = torch.randint(1, 20, (rows,), generator=generator).float()
    losses, chosen_reward, rejected_reward = orpo_losses(chosen_avg * counts, rejected_avg * counts, counts, counts,
                                                         lam=lam)
    odds_term, trl_chosen, trl_rejected = trl_odds_ratio(lam, chosen_avg, rejected_avg)
    assert_equal(losses, -chosen_avg - odds_term)
    assert_equal(chosen_reward, trl_chosen)
    assert_equal(rejected_reward, trl_rejected)


@pytest.mark.parametrize("lam", [0.1, 5.0])
def test_orpo_odds_ratio_term_equals_trl_at_edges_and_stays_finite_where_trl_is_not(lam: float) -> None:
    """Edge values: equal and extreme probabilities; averages within 1e-6 of 0 (p ≈ 1) are clamped in
    log(1 − p) (documented difference), where TRL's gradient is not finite and ours is."""
    chosen_avg = torch.tensor([-0.7, -1e-3, -20.0, -0.693, -5.0, ORPO_MAX_AVG_LOGP, -60.0])
    rejected_avg = torch.tensor([-0.7, -20.0, -1e-3, -0.694, -5.0 - 1e-6, -3.0, -0.1])
    ones = torch.ones_like(chosen_avg)
    losses, _, _ = orpo_losses(chosen_avg, rejected_avg, ones, ones, lam=lam)
    odds_term, _, _ = trl_odds_ratio(lam, chosen_avg, rejected_avg)
    assert_equal(losses, -chosen_avg - odds_term)

    certain = torch.tensor([-1e-8, 0.0], requires_grad=True)  # the chosen answer's tokens are all but certain
    rejected = torch.tensor([-2.0, -2.0])
    ours, _, _ = orpo_losses(certain, rejected, torch.ones(2), torch.ones(2), lam=lam)
    ours.sum().backward()
    assert certain.grad is not None and torch.isfinite(certain.grad).all()
    clamped = certain.detach().clamp(max=ORPO_MAX_AVG_LOGP)
    assert_equal(ours.detach(), -certain.detach() - trl_odds_ratio(lam, clamped, rejected)[0])
    theirs_input = certain.detach().clone().requires_grad_(True)
    trl_odds_ratio(lam, theirs_input, rejected)[0].sum().backward()
    assert theirs_input.grad is not None and not torch.isfinite(theirs_input.grad).all()


# --- KTO (KTOTrainer._compute_loss, loss_type="kto") --------------------------------------------------------


def trl_kto(beta: float, desirable_weight: float, undesirable_weight: float, answers: Sequences,
            kl_answers: Sequences, labels: Tensor, ref_logps: Tensor, ref_kl_logps: Tensor) -> tuple[float, float]:
    """KTOTrainer._compute_loss with a stand-in `self` and precomputed reference log-probabilities; (loss, kl)."""
    trainer = trl_self(beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                       loss_type="kto", calculate_KL=True, precompute_ref_logps=True)
    trainer._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(trainer, model, batch)  # type: ignore[arg-type]
    batch = {"input_ids": answers.input_ids, "attention_mask": answers.attention_mask,
             "completion_mask": answers.completion_mask, "KL_input_ids": kl_answers.input_ids,
             "KL_attention_mask": kl_answers.attention_mask, "KL_completion_mask": kl_answers.completion_mask,
             "label": labels, "ref_logps": ref_logps, "ref_KL_logps": ref_kl_logps}
    loss = KTOTrainer._compute_loss(trainer, token_table(answers, kl_answers), batch, return_outputs=False)  # type: ignore[arg-type]
    return float(loss), trainer._metrics["train"]["kl"][-1]


def kto_case(seed: int, rows: int, labels: list[bool] | None = None,
             kl_shift: float = 0.0) -> tuple[Sequences, Sequences, Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    answers = Sequences(random_answers(generator, rows), prompts(generator, rows))
    kl_answers = Sequences(random_answers(generator, rows), prompts(generator, rows), offset=10_000)
    label = torch.tensor(labels) if labels is not None else torch.rand(rows, generator=generator) > 0.5
    ref_logps = answers.sums + torch.randn(rows, generator=generator) * 3
    ref_kl_logps = kl_answers.sums + torch.randn(rows, generator=generator) + kl_shift
    return answers, kl_answers, label, ref_logps, ref_kl_logps


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.33), (2.5, 0.5)])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", SEEDS)
def test_kto_loss_and_kl_equal_trl_kto_trainer(weights: tuple[float, float], beta: float, seed: int) -> None:
    answers, kl_answers, labels, ref_logps, ref_kl_logps = kto_case(seed, rows=8)
    losses, kl, _ = kto_losses(answers.sums, ref_logps, kl_answers.sums, ref_kl_logps, labels, beta=beta,
                               desirable_weight=weights[0], undesirable_weight=weights[1])
    trl_loss, trl_kl = trl_kto(beta, *weights, answers, kl_answers, labels, ref_logps, ref_kl_logps)
    assert_equal(losses.mean(), trl_loss)
    assert_equal(kl, trl_kl)


@pytest.mark.parametrize("case", ["all desirable", "all undesirable", "kl clamped to 0", "large kl"])
def test_kto_loss_equals_trl_kto_trainer_at_edges(case: str) -> None:
    labels = {"all desirable": [True] * 4, "all undesirable": [False] * 4}.get(case)
    kl_shift = {"kl clamped to 0": 100.0, "large kl": -200.0}.get(case, 0.0)  # reference far above / below
    answers, kl_answers, label, ref_logps, ref_kl_logps = kto_case(11, rows=4, labels=labels, kl_shift=kl_shift)
    losses, kl, _ = kto_losses(answers.sums, ref_logps, kl_answers.sums, ref_kl_logps, label, beta=0.1)
    trl_loss, trl_kl = trl_kto(0.1, 1.0, 1.0, answers, kl_answers, label, ref_logps, ref_kl_logps)
    if case == "kl clamped to 0":
        assert kl.item() == 0.0
    assert_equal(losses.mean(), trl_loss)
    assert_equal(kl, trl_kl)


# --- Reward model (RewardTrainer.compute_loss) --------------------------------------------------------------


def trl_reward_loss(chosen: Tensor, rejected: Tensor) -> tuple[float, dict[str, float]]:
    """RewardTrainer.compute_loss with a stand-in `self` (no margin column, no reward centering) and a model
    that returns the given rewards."""
    trainer = trl_self(args=SimpleNamespace(center_rewards_coefficient=None))
    rows = len(chosen) * 2
    inputs = {"input_ids": torch.zeros(rows, 3, dtype=torch.long), "attention_mask": torch.ones(rows, 3)}
    loss = RewardTrainer.compute_loss(trainer, FixedRewards(torch.cat([chosen, rejected])), inputs)  # type: ignore[arg-type]
    return float(loss), {key: values[-1] for key, values in trainer._metrics["train"].items()}


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_reward_model_loss_equals_trl_reward_trainer(scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    chosen, rejected = torch.randn(8, generator=generator) * scale, torch.randn(8, generator=generator) * scale
    trl_loss, metrics = trl_reward_loss(chosen, rejected)
    assert_equal(pairwise_reward_losses(chosen, rejected).mean(), trl_loss)
    assert (chosen > rejected).float().mean().item() == pytest.approx(metrics["accuracy"])


@pytest.mark.parametrize("margin", EDGE_MARGINS)
def test_reward_model_loss_equals_trl_reward_trainer_at_edge_margins(margin: float) -> None:
    chosen, rejected = torch.tensor([3.0 + margin]), torch.tensor([3.0])
    losses = pairwise_reward_losses(chosen, rejected)
    assert torch.isfinite(losses).all()
    assert_equal(losses.mean(), torch.tensor(trl_reward_loss(chosen, rejected)[0]))


# --- The log-probabilities the losses are fed -----------------------------------------------------------------


def test_answer_logps_equal_trl_fused_lm_head_on_a_random_llama() -> None:
    """Our `sequence_logps` (head-only projection of the answer positions) against TRL's fused LM head on the
    same padded batch of a small random Llama, fp32: the same per-sequence sums of answer log-probabilities."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    lengths, prompt_lengths = [9, 14, 5, 12], [3, 6, 2, 1]
    width = max(lengths)
    input_ids = torch.randint(1, 97, (len(lengths), width), generator=generator)
    attention = torch.zeros_like(input_ids)
    completion = torch.zeros_like(input_ids)
    for row, (length, prompt) in enumerate(zip(lengths, prompt_lengths, strict=True)):
        attention[row, :length] = 1
        completion[row, prompt:length] = 1
    with torch.no_grad():
        ours, counts = sequence_logps(model, {"input_ids": input_ids, "attention_mask": attention}, completion)
        add_fused_lm_head(model)
        labels = input_ids.masked_fill(completion == 0, -100)
        theirs = model(input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True).log_probs
    assert_equal(ours, theirs.sum(dim=1))
    assert counts.tolist() == [length - prompt for length, prompt in zip(lengths, prompt_lengths, strict=True)]
