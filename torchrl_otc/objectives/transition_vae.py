"""The loss of OTC's transition CVAE, the model behind the embedding distance ``d_e`` (paper section 3.5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.objectives import LossModule

from torchrl_otc.modules.models.vae import gaussian_kl
from torchrl_otc.objectives.utils import Reduction, call_net

__all__ = ["TransitionVAELoss"]


class TransitionVAELoss(LossModule):
    r"""Reconstruction + KL loss of the transition CVAE :class:`~torchrl_otc.modules.models.vae.TransitionVAE`.

    Jiang & Lu (AAAI 2023), section 3.5: ``G_i = {E_i(mu, sigma | s, a_i, s'), D_i(a_i | s, s', z)}`` is a
    conditional VAE (Kingma and Welling 2013) over agent ``i``'s transitions; its mean ``mu(s, a_i, s')`` is the
    embedding of the distance ``d_e``. It is trained on the agent's merged data with

    .. math::

        \mathcal{L}_{G} = \frac{1}{d_a}\lVert \bar a_i - \hat a_i \rVert_2^2
            + \beta\, \frac{1}{d_z} D_{KL}\left(\mathcal{N}(\mu, \sigma) \,\Vert\, \mathcal{N}(0, I)\right),
        \qquad \hat a_i = D_i(s, s', \mu + \sigma\epsilon),

    where :math:`\bar a_i` is the standardised action (the module standardises its inputs) and both terms are
    averaged over their dimensions, as BCQ's action VAE loss is. The paper gives no KL weight; the default
    ``beta = 0.5`` is BCQ's. A smaller weight keeps more information about the transition in ``mu``; a larger
    one pulls every embedding towards 0 (posterior collapse), which makes all transitions look alike.

    Args:
        vae_network: a :class:`~tensordict.nn.TensorDictModule` wrapping a
            :class:`~torchrl_otc.modules.models.vae.TransitionVAE`, reading ``[observation, action,
            ("next", "observation")]`` and writing ``["vae_reconstruction", "vae_target", "vae_loc",
            "vae_log_std"]``.

    Keyword Args:
        kl_weight: ``beta``. Defaults to ``0.5``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        use_prioritized_weights: weight the rows by ``priority_weight`` when the batch has it (``"auto"``,
            default), always (``True``) or never (``False``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_otc.modules.models.vae import TransitionVAE
        >>> vae = TensorDictModule(TransitionVAE(3, 2, 4, hidden_sizes=(16,)),
        ...     in_keys=["observation", "action", ("next", "observation")],
        ...     out_keys=["vae_reconstruction", "vae_target", "vae_loc", "vae_log_std"])
        >>> loss = TransitionVAELoss(vae)
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2),
        ...                     ("next", "observation"): torch.randn(8, 3)}, [8])
        >>> out = loss(batch)
        >>> sorted(out.keys())
        ['loss_vae', 'vae_kl', 'vae_reconstruction']
        >>> out["loss_vae"].backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (``set_keys(name=key)``).

        Attributes:
            reconstruction (NestedKey): the decoder output. Defaults to ``"vae_reconstruction"``.
            target (NestedKey): the standardised action the module returns. Defaults to ``"vae_target"``.
            loc (NestedKey): the encoder mean. Defaults to ``"vae_loc"``.
            log_std (NestedKey): the encoder log-std. Defaults to ``"vae_log_std"``.
            priority_weight (NestedKey): importance weights, read only when present.
                Defaults to ``"priority_weight"``.
        """

        reconstruction: NestedKey = "vae_reconstruction"
        target: NestedKey = "vae_target"
        loc: NestedKey = "vae_loc"
        log_std: NestedKey = "vae_log_std"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    out_keys = ["loss_vae", "vae_reconstruction", "vae_kl"]

    vae_network: TensorDictModule
    vae_network_params: TensorDictParams
    target_vae_network_params: TensorDictParams | None

    def __init__(
        self,
        vae_network: TensorDictModule,
        *,
        kl_weight: float = 0.5,
        reduction: Reduction | None = None,
        use_prioritized_weights: str | bool = "auto",
    ) -> None:
        super().__init__()
        if not (kl_weight >= 0 and kl_weight < float("inf")):
            raise ValueError(f"kl_weight must be a finite number >= 0; got {kl_weight}.")
        if not isinstance(vae_network, TensorDictModule) or len(vae_network.out_keys) != 4:
            raise TypeError(
                "vae_network must be a TensorDictModule wrapping a TransitionVAE with four out_keys "
                "(reconstruction, target, loc, log_std); got "
                f"{type(vae_network).__name__} with out_keys {getattr(vae_network, 'out_keys', None)}."
            )
        self.reduction = "mean" if reduction is None else reduction
        self.use_prioritized_weights = use_prioritized_weights
        self.kl_weight = float(kl_weight)
        self.convert_to_functional(vae_network, "vae_network", create_target_params=False)
        self._in_keys = list(vae_network.in_keys)

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = list(self._in_keys)
        if self.use_prioritized_weights is True:
            keys.append(self.tensor_keys.priority_weight)
        return keys

    @in_keys.setter
    def in_keys(self, values: list[NestedKey]) -> None:
        self._in_keys = list(values)

    def _forward_value_estimator_keys(
        self, **kwargs
    ) -> None:  # no value estimator: nothing to forward
        return None

    def vae_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction + ``kl_weight`` * KL, reduced over the batch (gradient to the VAE only).

        Args:
            tensordict: a batch holding the module's ``in_keys``.

        Returns:
            the reduced loss and ``{"vae_reconstruction", "vae_kl"}`` (detached batch means).
        """
        weights = self._maybe_get_priority_weight(tensordict)
        inputs = [tensordict.get(key) for key in self.vae_network.in_keys]
        recon, target, loc, log_std = call_net(self, "vae_network", self.vae_network_params, inputs)
        recon_loss = (recon - target).pow(2).mean(-1)
        kl = gaussian_kl(loc, log_std)
        loss = self._reduce_loss(
            recon_loss + self.kl_weight * kl, tensordict=tensordict, weights=weights
        )
        return loss, {
            "vae_reconstruction": recon_loss.detach().mean(),
            "vae_kl": kl.detach().mean(),
        }

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``{"loss_vae", "vae_reconstruction", "vae_kl"}`` for one batch."""
        loss, metadata = self.vae_loss(tensordict)
        return TensorDict({"loss_vae": loss, **metadata}, batch_size=[])

    def make_value_estimator(self, value_type=None, **hyperparams) -> TransitionVAELoss:
        """The VAE has no value function: nothing to build. Returns the loss itself (TorchRL's chaining)."""
        return self

    @torch.no_grad()
    def embed(self, tensordict: TensorDictBase) -> Tensor:
        """The embedding ``mu(s, a_i, s')`` of the rows of ``tensordict``, ``[N, embedding_dim]``."""
        inputs = [tensordict.get(key) for key in self.vae_network.in_keys]
        return call_net(self, "vae_network", self.vae_network_params, inputs, method="embed")
