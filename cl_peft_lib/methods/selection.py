"""Selection machinery shared by the prompt methods and their LoRA swaps.

The paper's argument is a controlled swap: L2P -> L2L and S-Prompts -> S-LoRA keep
*everything* but the PEFT module. So the pieces that decide *which* module a
sample uses live here, once, and both families call them:

* :func:`query_features`: the query, i.e. the [CLS] feature of the same frozen ViT
  run without any prompt or adapter (no gradients).
* :class:`KeyedPool`: L2P's pool of M learnable keys; top-N selection by cosine
  similarity (optionally batch-wise during training) and the surrogate loss that
  pulls selected keys toward their queries. Hand-written because neither timm nor
  peft has a keyed, per-sample selection.
* :class:`KMeansTaskIdentifier`: S-Prompts' domain identification: k-means centroids
  of each domain's frozen, L2-normalised features; the nearest centroid names the domain.

Chapter: README (``selection.py``: query, keys, k-means shared by both families).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def query_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[CLS] feature of the frozen backbone without prompts/adapters, shape ``(B, D)``, no gradient.

    Methods that inject modules into the backbone must disable them around this call
    (e.g. peft's ``disable_adapter()`` context, or a prompt-free forward).
    """
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


def count_ids(idx: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of ``0..n-1`` occurs in ``idx`` (``torch.bincount(idx.flatten(), minlength=n)``,
    which on a GPU waits for it to learn the output size; a scatter-add of fixed size does not)."""
    flat = idx.flatten()
    return torch.zeros(n, dtype=torch.long, device=idx.device).index_add_(0, flat, torch.ones_like(flat))


class KeyedPool(nn.Module):
    """A pool of M keys ``k_m`` (one per prompt or LoRA module) matched to queries ``q(x)``.

    Args:
        pool_size: M.
        embed_dim: D, the query dimension.
        top_n: N modules selected per sample.
        batchwise: during training, the N keys most often selected in the batch are used
            for every sample of the batch (L2P's ``batchwise_prompt``). At test time only under
            the ``batchwise_selection`` evaluation setting (``batchwise_test``), as the references
            do; by default a test prediction does not depend on the rest of its batch.

    Attributes:
        keys: ``(M, D)`` learnable keys, initialised uniform in [-1, 1] as in L2P.
        counts: ``(M,)`` how often each key was selected since the last :meth:`reset_counts`.
    """

    def __init__(self, pool_size: int, embed_dim: int, top_n: int, batchwise: bool = False) -> None:
        super().__init__()
        if not 1 <= top_n <= pool_size:
            raise ValueError(f"top_n={top_n} must be between 1 and pool_size={pool_size}")
        self.pool_size, self.top_n, self.batchwise = pool_size, top_n, batchwise
        #: batch-wise selection at test time too (the ``batchwise_selection`` evaluation setting)
        self.batchwise_test = False
        self.keys = nn.Parameter(torch.empty(pool_size, embed_dim).uniform_(-1, 1))
        self.register_buffer("counts", torch.zeros(pool_size, dtype=torch.long), persistent=False)

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B, M)`` between queries and keys."""
        return F.normalize(query.float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).T

    def select(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices ``(B, N)`` of the selected keys and the similarity matrix ``(B, M)``."""
        sim = self.similarity(query)
        idx = sim.topk(self.top_n, dim=1).indices
        if (self.batchwise and self.training) or (self.batchwise_test and not self.training):
            votes = count_ids(idx, self.pool_size)
            major = votes.topk(self.top_n).indices
            idx = major.unsqueeze(0).expand(len(query), -1)
        self.counts += count_ids(idx, self.pool_size)
        return idx, sim

    @staticmethod
    def surrogate(sim: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        r"""L2P's matching term :math:`\frac{1}{B}\sum_b \sum_{m \in S(x_b)} \cos(q(x_b), k_m)`.

        The training loss subtracts ``lambda`` times this (pulling selected keys to their queries).
        """
        return sim.gather(1, idx).sum() / sim.shape[0]

    def reset_counts(self) -> None:
        self.counts.zero_()


class KMeansTaskIdentifier(nn.Module):
    """S-Prompts' task (domain) identification by k-means on frozen features.

    At the end of task t, :meth:`add_task` clusters that task's L2-normalised frozen
    features into ``k`` centroids. :meth:`identify` returns, per sample, the task of
    the nearest centroid under the L1 distance between L2-normalised vectors, as the
    S-Prompts reference code computes it (``(((f - c) ** 2) ** 0.5).sum(1)``).

    Args:
        k: centroids per task (S-Prompts: 5).
    """

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.k = k
        self.centroids: torch.Tensor | None = None  # (T*k, D)
        self.owners: torch.Tensor | None = None  # (T*k,)

    @torch.no_grad()
    def add_task(self, task_id: int, features: torch.Tensor, seed: int = 0) -> None:
        """Cluster ``features`` (N, D) of task ``task_id`` and store the centroids."""
        from sklearn.cluster import KMeans

        f = F.normalize(features.float(), dim=1).cpu().numpy()
        k = min(self.k, len(f))
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(f)
        c = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        o = torch.full((k,), task_id, dtype=torch.long)
        self.centroids = c if self.centroids is None else torch.cat([self.centroids.cpu(), c])
        self.owners = o if self.owners is None else torch.cat([self.owners.cpu(), o])

    @torch.no_grad()
    def identify(self, features: torch.Tensor) -> torch.Tensor:
        """Task id ``(B,)`` of the nearest centroid for each feature."""
        if self.centroids is None:
            raise RuntimeError("no task has been added yet; call add_task at the end of each task")
        c = self.centroids.to(features.device)
        d = torch.cdist(F.normalize(features.float(), dim=1), c, p=1)
        return self.owners.to(features.device)[d.argmin(dim=1)]

    def get_extra_state(self):
        return {"centroids": self.centroids, "owners": self.owners}

    def set_extra_state(self, state) -> None:
        self.centroids, self.owners = state["centroids"], state["owners"]
