"""Random views of a batch of images for self-supervised terms (SLIP's SimCLR views), as tensor
ops on the batch (any device): a random resized crop (scale and aspect ratio as SimCLR's, on
32-pixel images a milder scale range) and a horizontal flip, by one batched affine resampling.
The draws are given (float[B, 5] uniforms per image), so a caller can make them a function of
the pair, not of its position in a batch or a rank.
"""
import math

import torch
import torch.nn.functional as F

from shapley_kernels.checks import check_tensor

SCALE = (0.35, 1.0)            # crop area as a share of the image
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # crop aspect ratio


def random_view(images: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """images float[B, C, S, S], uniforms float[B, 5] in [0, 1) (area, log-ratio, x, y, flip) ->
    float[B, C, S, S]: each image's crop of that area and ratio at that place, resized back to
    S x S (bilinear, border padding) and flipped left-right where the flip draw is < 0.5."""
    check_tensor("images", images, dims=4, dtype_kind="float")
    check_tensor("uniforms", uniforms, dims=2, dtype_kind="float")
    if uniforms.shape != (images.shape[0], 5):
        raise ValueError(f"uniforms must be float[{images.shape[0]}, 5], got {list(uniforms.shape)}")
    u = uniforms.to(images.device, torch.float32)
    area = SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 0]
    ratio = torch.exp(math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * u[:, 1])
    width = torch.sqrt(area * ratio).clamp(max=1.0)     # as shares of the side
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (1.0 - width) * (2.0 * u[:, 2] - 1.0)     # normalised [-1, 1] coordinates: the crop stays inside
    centre_y = (1.0 - height) * (2.0 * u[:, 3] - 1.0)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False).to(images.dtype)
