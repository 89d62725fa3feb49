"""What training a mixture-of-experts, block-diffusion organism adds: a start from a dense organism, expert-bias
load balancing and batches under block attention.

- ``upcycle``: the MoE model starts as a trained dense model of the same width: every parameter the two
  share by name and shape is copied, each MoE layer's shared expert is the dense layer's MLP, the routed
  experts start with a zero output projection (so the MoE model computes what the dense one did), and
  token embeddings are copied by token string (the mask token's from the dense family's mask token).
- ``ExpertBalancer``: LLaDA2's (DeepSeek-V3's) auxiliary-loss-free balancing. Each MoE layer's router
  has an ``expert_bias`` that only chooses experts; after every optimizer step it moves by ``rate``
  towards balance: up for an expert chosen less often than the layer's mean over the step's tokens,
  down for one chosen more often.
- ``block_length_for``: which attention a training batch uses, drawn from the batch's generator: the
  family's block attention for a share ``block_fraction`` of the batches, full attention otherwise.
"""

import re

import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.models.hook_names import hook_name


@torch.no_grad()
def upcycle(model, source, tokenizer) -> None:
    """Copy the dense ``source`` (a ``LoadedModel``) into the MoE ``model`` (see the module docstring);
    ``tokenizer``: ``model``'s. ``UsageError`` when a shared parameter's shape differs."""
    theirs = dict(source.model.named_parameters())
    ours_vocab, their_vocab = tokenizer.get_vocab(), source.tokenizer.get_vocab()
    for name, param in model.named_parameters():
        shared = re.sub(r"\.mlp\.shared_expert\.", ".mlp.", name)
        if name == "embed.weight" or name == "unembed.weight" and name in theirs:
            rows = [(ours, their_vocab[token]) for token, ours in ours_vocab.items() if token in their_vocab]
            rows.append((tokenizer.mask_token_id, source.mask_token_id))
            param[torch.tensor([r[0] for r in rows])] = theirs[name][torch.tensor([r[1] for r in rows])]
        elif re.search(r"\.experts\.\d+\.down_proj\.weight$", name):
            param.zero_()
        elif shared in theirs:
            if theirs[shared].shape != param.shape:
                raise UsageError(f"{source.path}: {shared} has shape {list(theirs[shared].shape)}, {name} needs "
                                 f"{list(param.shape)}")
            param.copy_(theirs[shared])


class ExpertBalancer:
    """Counts the experts each MoE layer of ``model`` chooses (hooks on ``mlp.hook_topk_indices``) between
    ``reset`` and ``update``; ``update`` moves the layers' expert biases by ``rate`` towards balance."""

    def __init__(self, model, rate: float = 1e-2):
        self.rate = rate
        self.layers = [layer for layer in range(model.cfg.n_layers)
                       if model.cfg.is_moe_layer(layer) and model.blocks[layer].mlp.gate.expert_bias is not None]
        self.biases = {layer: model.blocks[layer].mlp.gate.expert_bias for layer in self.layers}
        self.counts = {layer: torch.zeros(model.cfg.n_experts) for layer in self.layers}
        for layer in self.layers:
            model.mod_dict[hook_name("topk_indices", layer)].add_hook(self._counter(layer), is_permanent=True)

    def _counter(self, layer: int):
        def count(indices, hook):
            if torch.is_grad_enabled():  # training forward passes only, not evaluation
                self.counts[layer] += torch.bincount(indices.reshape(-1).cpu(), minlength=len(self.counts[layer]))
        return count

    def reset(self) -> None:
        """Forget the counts (call before each optimizer step's forward passes)."""
        for counts in self.counts.values():
            counts.zero_()

    @torch.no_grad()
    def update(self) -> None:
        """Move every expert bias by ``rate`` * sign(mean count - its count) (no change where equal)."""
        for layer, counts in self.counts.items():
            self.biases[layer] += self.rate * torch.sign(counts.mean() - counts).to(self.biases[layer].dtype)


def block_length_for(block_length: int | None, block_fraction: float, generator: torch.Generator) -> int | None:
    """Return the block length a training batch uses: ``block_length`` for a share ``block_fraction`` of the
    batches (one draw from ``generator``), None (full attention) otherwise; no draw when the share is 0,
    so that families trained without block attention keep their random stream."""
    if not block_fraction or not block_length:
        return None
    return block_length if float(torch.rand((), generator=generator)) < block_fraction else None
