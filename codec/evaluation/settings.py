"""What `odp bench` and the TUI compare at, in one place and without torch (the CLI's defaults read it)."""

BUDGETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3)  # bits per pixel
SCALES = (1, 2, 4, 8)  # classic codecs also code the image downscaled by these, enlarged back
CLASSIC = ("jpeg", "webp", "avif")  # the classic codecs the TUI shows (the bench adds JPEG XL when installed)
METRICS = ("psnr", "ms-ssim", "lpips-alex", "lpips-vgg", "dists")
# The ODP files the bench measures: "odp" what `odp encode --bytes` makes; "odp-psnr-scale" the coding
# scale of highest PSNR (`--scale psnr`); "odp-uniform" full size, every tile alike
ODP_CONTENDERS = ("odp", "odp-psnr-scale", "odp-uniform")
