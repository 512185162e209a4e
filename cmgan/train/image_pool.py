"""History pool of generated images for the discriminators (Shrivastava et al. 2017; CycleGAN's `ImagePool`).

The discriminator is shown fakes drawn half from the current batch and half from the last `size` fakes, which
damps oscillation. Unlike the public CycleGAN code, the pool and its random stream are part of the checkpoint
(`state_dict`), so a resumed run draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import torch


class ImagePool:
    """Keep up to `size` past fakes; `query` returns a batch mixing new fakes and stored ones.

    Each rank owns its pool (its own fakes) and its own `torch.Generator`, seeded from `seed`; the draw does not
    touch the global RNG, so adding or removing the pool leaves the rest of training's randomness unchanged.
    """

    def __init__(self, size: int, seed: int) -> None:
        if size < 0:
            raise ValueError(f"pool size {size} must be >= 0 (0 disables the pool)")
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        """fakes: (B, C, H, W) detached fakes of this step -> (B, C, H, W) images to show the discriminator.

        While the pool fills, every fake is stored and returned. Once full, each fake is returned as is with
        probability 1/2; otherwise a random stored fake is returned and the new one takes its place.
        """
        if self.size == 0:
            return fakes
        out = []
        for image in fakes.detach():
            image = image.clone()
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
                continue
            # Both draws are made for every image so the stream advances identically whatever the coin says.
            coin = torch.rand((), generator=self.generator).item()
            index = int(torch.randint(self.size, (), generator=self.generator).item())
            if coin < 0.5:
                out.append(self.images[index])
                self.images[index] = image
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        """Stored images (on the CPU, stacked) and the generator state; safe for `torch.load(weights_only=True)`."""
        images = torch.stack([im.cpu() for im in self.images]) if self.images else torch.empty(0)
        return {"size": self.size, "images": images, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        if int(state["size"]) != self.size:
            raise ValueError(
                f"checkpointed image pool holds up to {state['size']} images but loss.pool_size={self.size}; "
                "resume with the pool size the run started with"
            )
        images = state["images"]
        self.images = [im.to(device) for im in images] if images.numel() else []
        self.generator.set_state(state["generator"])
