"""The MoE-LoRA layer (docs/method.md §5): N stacked LoRA experts and a top-k router on one linear.

Efficient form: the experts are stacked (``lora_A`` [N·r, d_in], ``lora_B`` [d_out, N·r]) and
the gate g [T, N] (renormalised top-k weights, zeros elsewhere) multiplies the rank-space
activations, so one forward is two matmuls with static shapes, no host synchronisation and no
Python loop over experts. Unselected experts get exactly zero gradient yet stay in the graph,
which keeps DDP/FSDP happy (no unused parameters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from alphalora.errors import AlphaLoRAError


def linear_shape(base: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (whose weight is (in, out))."""
    if isinstance(base, Conv1D):
        d_in, d_out = base.weight.shape
        return int(d_in), int(d_out)
    if isinstance(base, nn.Linear):
        return int(base.in_features), int(base.out_features)
    raise AlphaLoRAError(
        f"Cannot adapt a {type(base).__name__}: only nn.Linear and GPT-2 Conv1D layers are "
        "supported. Choose other target modules."
    )


def route(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Router logits [T, N] → (probabilities, gate, top-k indices), all in float32.

    The gate holds the renormalised top-k weights at the selected experts and zeros elsewhere;
    it is built with ``scatter`` so nothing leaves the device.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    weights, index = probs.topk(top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    gate = torch.zeros_like(probs).scatter(-1, index, weights)
    return probs, gate, index


def switch_balance_loss(probs: Tensor, index: Tensor, token_weight: Tensor | None = None) -> Tensor:
    """Switch-style balancing loss N·Σ_i f_i·P_i of one layer (a 0-d float32 tensor).

    ``probs`` [T, N] are router probabilities (gradients flow through them), ``index`` [T, k]
    the selected experts, ``token_weight`` [T] 1 for real tokens and 0 for padding. f_i is the
    share of the (unmasked) top-k assignments that went to expert i, P_i the mean probability.
    A perfectly balanced router gives 1 (this is HF Mixtral's value divided by k).
    """
    num_tokens, num_experts = probs.shape
    top_k = index.shape[-1]
    if token_weight is None:
        token_weight = probs.new_ones(num_tokens)
    token_weight = token_weight.to(dtype=torch.float32, device=probs.device)
    total = token_weight.sum().clamp_min(1.0)
    mean_prob = (probs.float() * token_weight[:, None]).sum(dim=0) / total
    counts = probs.new_zeros(num_experts, dtype=torch.float32).index_add(
        0, index.reshape(-1), token_weight.repeat_interleave(top_k)
    )
    share = counts / (total * top_k)
    return num_experts * (share * mean_prob).sum()


def assignment_share(index: Tensor, num_experts: int, token_weight: Tensor | None = None) -> Tensor:
    """Share of the top-k assignments per expert [N] (float32, on the device of ``index``)."""
    flat = index.reshape(index.shape[0], -1)
    if token_weight is None:
        token_weight = torch.ones(flat.shape[0], device=index.device)
    token_weight = token_weight.to(dtype=torch.float32, device=index.device)
    counts = torch.zeros(num_experts, device=index.device).index_add(
        0, flat.reshape(-1), token_weight.repeat_interleave(flat.shape[1])
    )
    return counts / counts.sum().clamp_min(1.0)


class MoELoRALinear(nn.Module):
    """A frozen base linear plus a mixture of ``num_experts`` rank-``rank`` LoRA experts.

    output = base(x) + scaling · ((dropout(x) A_sᵀ) ⊙ repeat(g, r)) B_sᵀ, with the router
    (bias-free ``Linear(d_in → N)``) evaluated in float32 and top-k renormalised. The last
    router probabilities (with gradients while training) and top-k indices are kept in
    ``last_probs`` / ``last_index`` for the balancing loss.
    """

    def __init__(
        self,
        base: nn.Module,
        num_experts: int,
        top_k: int,
        *,
        rank: int = 8,
        lora_alpha: float = 16,
        dropout: float = 0.05,
        layer_index: int = 0,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d_in, d_out = linear_shape(base)
        if num_experts < 1:
            raise AlphaLoRAError(f"A layer needs at least 1 expert, got {num_experts}.")
        if not 1 <= top_k <= num_experts:
            raise AlphaLoRAError(
                f"top-k must lie between 1 and the number of experts ({num_experts}), got {top_k}."
            )
        if rank < 1:
            raise AlphaLoRAError(f"The LoRA rank must be at least 1, got {rank}.")
        if not 0.0 <= dropout < 1.0:
            raise AlphaLoRAError(f"LoRA dropout must lie in [0, 1), got {dropout}.")
        weight = base.weight
        if dtype is None:
            dtype = torch.promote_types(weight.dtype, torch.float32)
            if not dtype.is_floating_point:
                dtype = torch.float32
        self.base = base
        for param in self.base.parameters():
            param.requires_grad_(False)
        self.in_features, self.out_features = d_in, d_out
        self.num_experts, self.top_k, self.rank = int(num_experts), int(top_k), int(rank)
        self.lora_alpha = float(lora_alpha)
        self.scaling = self.lora_alpha / self.rank
        self.dropout_p = float(dropout)
        self.layer_index = int(layer_index)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory = {"device": weight.device, "dtype": dtype}
        self.lora_A = nn.Parameter(torch.empty(self.num_experts * self.rank, d_in, **factory))
        self.lora_B = nn.Parameter(torch.empty(d_out, self.num_experts * self.rank, **factory))
        self.router = nn.Linear(d_in, self.num_experts, bias=False, **factory)
        self.last_probs: Tensor | None = None
        self.last_index: Tensor | None = None
        self.reset_adapter_parameters()

    def reset_adapter_parameters(self) -> None:
        """A and the router kaiming-uniform(a = √5) (per expert, fan-in d_in), B zeros."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.router.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def router_logits(self, x: Tensor) -> Tensor:
        """Router logits [T, N] in float32, autocast disabled so they stay float32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.float(), self.router.weight.float())

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        probs, gate, index = route(self.router_logits(flat), self.top_k)
        keep_graph = self.training and torch.is_grad_enabled()
        self.last_probs = probs if keep_graph else probs.detach()
        self.last_index = index
        hidden = F.linear(self.lora_dropout(flat.to(self.lora_A.dtype)), self.lora_A)
        scale = (gate * self.scaling).to(hidden.dtype)
        hidden = (hidden.view(-1, self.num_experts, self.rank) * scale.unsqueeze(-1)).view(
            -1, self.num_experts * self.rank
        )
        delta = F.linear(hidden, self.lora_B)
        return out + delta.view(*lead, self.out_features).to(out.dtype)

    def clear_router_state(self) -> None:
        """Forget the stored router outputs (frees the graph they may still reference)."""
        self.last_probs = None
        self.last_index = None

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, "
            f"top_k={self.top_k}, rank={self.rank}, scaling={self.scaling:g}, "
            f"dropout={self.dropout_p:g}, layer={self.layer_index}"
        )
