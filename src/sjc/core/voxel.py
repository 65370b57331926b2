"""VoxelField: the 3D asset SJC optimises.

One grid holds density (channel 0) and C feature channels, looked up together by trilinear interpolation
(trilinear.py) of values at voxel centres over the box [-half, half]^3 (grid_sample's align_corners=False,
border padding). Density is softplus(d * exp(d_scale) + shift); features are raw (latent priors) or
sigmoid-mapped to [-1, 1] (pixel priors). An occupancy grid refreshed from the density marks empty space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .trilinear import cell_coords, trilinear

LOOKUPS = ("auto", "sparse", "grid_sample")


class VoxelField(nn.Module):
    def __init__(
        self,
        resolution: int = 100,
        channels: int = 4,
        *,
        feature_activation: str = "none",
        density_shift: float = -1.0,
        step_ratio: float = 0.5,
        half_size: float = 1.0,
        background: str = "texture",
        background_value: float = 1.0,
        background_size: int = 4,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if feature_activation not in ("none", "sigmoid"):
            raise ValueError(f"feature_activation must be 'none' or 'sigmoid', got {feature_activation!r}")
        if background not in ("texture", "fixed"):
            raise ValueError(f"background must be 'texture' or 'fixed', got {background!r}")
        if resolution < 2:
            raise ValueError(f"the grid resolution must be at least 2, got {resolution}")
        self._spec = dict(
            resolution=resolution,
            channels=channels,
            feature_activation=feature_activation,
            density_shift=density_shift,
            step_ratio=step_ratio,
            half_size=half_size,
            background=background,
            background_value=background_value,
            background_size=background_size,
        )
        self.channels = channels
        self.feature_activation = feature_activation
        self.density_shift = density_shift
        self.step_ratio = step_ratio
        self.background_mode = background
        self.background_value = background_value
        # How query() interpolates: 'sparse' (trilinear.py; several times faster on CPU), 'grid_sample'
        # (PyTorch's), or 'auto' (sparse for float32/64 on CPU, else grid_sample; and `render` takes the fused
        # kernels of fused.py on the CPU). A runtime choice, not saved.
        self.lookup = "auto"
        self.register_buffer("aabb", torch.tensor([[-half_size] * 3, [half_size] * 3]), persistent=False)
        self.half_size = float(half_size)  # the box's size on the host too: sizes need no read from the device

        n = resolution
        grid = torch.zeros(1, 1 + channels, n, n, n)
        grid[:, 1:] = torch.randn(1, channels, n, n, n, generator=generator)
        self.grid = nn.Parameter(grid)
        self.d_scale = nn.Parameter(torch.zeros(()))
        # A learned texture over the sphere of directions, or nothing for a fixed colour.
        size = background_size if background == "texture" else 1
        self.bg = nn.Parameter(torch.randn(1, channels, size, size, generator=generator))
        self.bg.requires_grad_(background == "texture")
        # Empty-space skipping (refresh_occupancy); all True skips nothing. Saved with the field, so a
        # resumed run skips exactly what the uninterrupted one did.
        self.register_buffer("occupancy", torch.ones(n, n, n, dtype=torch.bool))

    def spec(self) -> dict:
        """Constructor arguments that rebuild a field of this shape (stored in checkpoints)."""
        return {**self._spec, "resolution": self.resolution}

    # --- geometry -------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.grid.shape[-1]

    @property
    def voxel_size(self) -> float:
        return 2 * self.half_size / self.resolution

    @property
    def step_size(self) -> float:
        """Distance between samples along a ray, in world units."""
        return self.voxel_size * self.step_ratio

    def _grid_coords(self, pts: Tensor) -> Tensor:
        lo, hi = self.aabb[0].to(pts.dtype), self.aabb[1].to(pts.dtype)
        return ((pts - lo) / (hi - lo) * 2 - 1).reshape(1, -1, 1, 1, 3)

    def _lookup(self, pts: Tensor) -> tuple[Tensor, Tensor]:
        """Raw density [N] and raw features [N, C] of the grid at world points [N, 3], one trilinear lookup."""
        lookup = self.lookup
        if lookup == "auto":  # MKL's sparse products: CPU, float32 and float64
            cpu = self.grid.device.type == "cpu" and self.grid.dtype in (torch.float32, torch.float64)
            lookup = "sparse" if cpu else "grid_sample"
        if lookup == "sparse":
            return trilinear(self.grid, *cell_coords(pts, self.aabb, self.resolution))
        if lookup != "grid_sample":
            raise ValueError(f"VoxelField.lookup must be one of {LOOKUPS}, got {self.lookup!r}")
        raw_density, raw_features = self._grid_sample(self.grid, pts).split([1, self.channels], dim=1)
        return raw_density.squeeze(1), raw_features

    def _grid_sample(self, grid: Tensor, pts: Tensor) -> Tensor:
        out = F.grid_sample(grid, self._grid_coords(pts), mode="bilinear", padding_mode="border", align_corners=False)
        return out.view(grid.shape[1], -1).T

    # --- activations ----------------------------------------------------------------------
    def activate_density(self, raw: Tensor) -> Tensor:
        return F.softplus(raw * torch.exp(self.d_scale) + self.density_shift)

    def activate_features(self, raw: Tensor) -> Tensor:
        if self.feature_activation == "sigmoid":
            return torch.sigmoid(raw) * 2 - 1
        return raw

    # --- the Field protocol of render.py --------------------------------------------------
    def density(self, pts: Tensor) -> Tensor:
        """Volume density [N] at world points [N, 3] (grid_sample on the density channel alone)."""
        return self.activate_density(self._grid_sample(self.grid[:, :1], pts)[:, 0])

    def features(self, pts: Tensor) -> Tensor:
        """Features [N, C] at world points [N, 3] (grid_sample on the feature channels alone)."""
        return self.activate_features(self._grid_sample(self.grid[:, 1:], pts))

    def query(self, pts: Tensor) -> tuple[Tensor, Tensor]:
        """Density [N] and features [N, C] at world points [N, 3], in one grid lookup."""
        raw_density, raw_features = self._lookup(pts)
        return self.activate_density(raw_density), self.activate_features(raw_features)

    @torch.no_grad()
    def max_density(self) -> float:
        """The largest density anywhere in the box (trilinear values never exceed the largest voxel)."""
        return float(self.activate_density(self.grid[0, 0].max()))

    @torch.no_grad()
    def cell_query(
        self, pts: Tensor, *, lower_bound: bool = True, occupancy: bool = False
    ) -> tuple[Tensor | None, Tensor | None]:
        """Gradient-free answers at world points [N, 3] from one cell lookup each: with `lower_bound`, a
        lower bound of the density (trilinear values are convex combinations of the cell's 8 corners, so
        the least dense corner bounds them; softplus(x) >= max(x, 0)); with `occupancy`, whether the
        occupancy grid (refresh_occupancy) marks the cell as possibly non-empty."""
        base, _ = cell_coords(pts, self.aabb, self.resolution, weights=False)
        lower = marked = None
        if lower_bound:
            raw = self._cell_minimum().index_select(0, base)
            lower = (raw * torch.exp(self.d_scale) + self.density_shift).clamp_min_(0)
        if occupancy:
            marked = self.occupancy.reshape(-1).index_select(0, base)
        return lower, marked

    def _cell_minimum(self) -> Tensor:
        """The smallest raw density among each cell's 8 corner voxels, flat and indexed by the cell's lowest
        corner (as cell_coords' base). Entries of cells past the last voxel are meaningless and never read."""
        n, flat = self.resolution, self.grid[0, 0].reshape(-1)
        for shift in (1, n, n * n):  # x, then y, then z neighbours
            flat = torch.minimum(flat[:-shift], flat[shift:])
        return flat

    @torch.no_grad()
    def refresh_occupancy(self, threshold: float = 1e-4, dilation: int = 2) -> Tensor:
        """Mark for empty-space skipping every cell with a corner voxel whose alpha exceeds `threshold`,
        grown by `dilation` cells each way (so the surface can still grow until the next refresh).
        Returns the fraction of cells marked, a 0-d tensor on the field's device (read it only when needed)."""
        occupied = (self.voxel_alpha() > threshold).to(self.grid.dtype)[None, None]
        # A cell [z, y, x] spans voxel centres z..z+1 (etc.): occupied if any of its 8 corners is.
        cells = F.max_pool3d(F.pad(occupied, (0, 1, 0, 1, 0, 1)), 2, stride=1)
        if dilation > 0:
            cells = F.max_pool3d(cells, 2 * dilation + 1, stride=1, padding=dilation)
        self.occupancy = cells[0, 0] > 0
        return self.occupancy.float().mean()

    def background(self, dirs: Tensor) -> Tensor:
        """Background features [R, C] seen along unit directions [R, 3]."""
        if self.background_mode == "fixed":
            return torch.full(
                (dirs.shape[0], self.channels), self.background_value, dtype=dirs.dtype, device=dirs.device
            )
        x, y, z = dirs.unbind(-1)
        u = torch.atan2(x, z) / math.pi  # azimuth, front (+z) at the centre
        v = -torch.asin(y.clamp(-1, 1)) / (math.pi / 2)  # up at the top row
        uv = torch.stack([u, v], dim=-1).view(1, -1, 1, 2).to(self.bg.dtype)
        out = F.grid_sample(self.bg, uv, mode="bilinear", padding_mode="border", align_corners=False)
        return self.activate_features(out.view(self.channels, -1).T)

    # --- whole-grid views -----------------------------------------------------------------
    def voxel_alpha(self) -> Tensor:
        """Opacity of one voxel-length step through each voxel: [n, n, n] indexed [z, y, x]."""
        sigma = self.activate_density(self.grid[0, 0])
        return 1 - torch.exp(-sigma * self.voxel_size)

    def voxel_centres(self) -> Tensor:
        """World coordinates [n, n, n, 3] (x, y, z) of the voxel centres, indexed [z, y, x]."""
        n, lo = self.resolution, -self.half_size
        c = lo + (torch.arange(n, dtype=self.grid.dtype, device=self.grid.device) + 0.5) * self.voxel_size
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        return torch.stack([xx, yy, zz], dim=-1)

    @torch.no_grad()
    def upsample(self, resolution: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Resample the grid to `resolution`^3 (coarse-to-fine): trilinear at the new voxel centres, so the
        new grid holds the old field's lookups there. The grid becomes a new Parameter (a graph still holding
        the old one cannot meet a gradient of the wrong shape); `optimizer`'s groups are pointed at it and its
        state of the grid (Adam-style moments, the grid's shape) is resampled alike. Marks every cell occupied."""
        old = self.grid
        self.grid = nn.Parameter(resample_grid(old.data, resolution), requires_grad=old.requires_grad)
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["params"] = [self.grid if p is old else p for p in group["params"]]
            if old in optimizer.state:
                state = optimizer.state.pop(old)
                for key, value in state.items():
                    if torch.is_tensor(value) and value.dim() == 5:
                        state[key] = resample_grid(value, resolution)
                optimizer.state[self.grid] = state
        self.occupancy = torch.ones((resolution,) * 3, dtype=torch.bool, device=self.grid.device)

    @torch.no_grad()
    def resize(self, resolution: int) -> None:
        """Give the grid and occupancy buffer the shape of a `resolution`^3 field (values undefined), so a
        state dict of that resolution loads into this field (a checkpoint taken after an upsampling)."""
        if resolution != self.resolution:
            self.grid.data = self.grid.data.new_zeros(1, 1 + self.channels, resolution, resolution, resolution)
            self.occupancy = torch.ones((resolution,) * 3, dtype=torch.bool, device=self.grid.device)

    def param_groups(self, lr: float, background_lr: float) -> list[dict]:
        """Optimiser groups: grid and density scale at `lr`, background texture at `background_lr`."""
        groups = [{"params": [self.grid, self.d_scale], "lr": lr}]
        if self.bg.requires_grad:
            groups.append({"params": [self.bg], "lr": background_lr})
        return groups


def resample_grid(grid: Tensor, resolution: int) -> Tensor:
    """A [1, C, n, n, n] grid of values at voxel centres resampled trilinearly to `resolution`^3 (border values
    held outside the outer centres, as the field's lookups do)."""
    return F.interpolate(grid, size=(resolution,) * 3, mode="trilinear", align_corners=False)
