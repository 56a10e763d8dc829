"""Draw docs/figures/failure-cases.png: crops of eval photos with text, faces and fine texture,
original | ODP at 0.03 bpp | at 0.01 bpp (the shipped model, default settings: one encode, cut
to each budget, as `odp encode` then `odp truncate --bytes` make it).

    python docs/figures/failure_cases.py ../shared/data/eval/photos
"""
import argparse
from pathlib import Path

from PIL import Image, ImageDraw

import odp

CASES = [  # (photo, crop box, what it shows)
    ("wikiphoto_014.png", (320, 730, 576, 858), "text: number plate"),
    ("wikiphoto_014.png", (320, 420, 576, 676), "fine texture: radiator grille"),
    ("wikiphoto_017.png", (430, 600, 686, 856), "faces: crowd"),
]
BUDGETS = (0.03, 0.01)

ap = argparse.ArgumentParser()
ap.add_argument("photos", type=Path)
args = ap.parse_args()
decoded = {}
for name in sorted({c[0] for c in CASES}):
    im = Image.open(args.photos / name).convert("RGB")
    whole = odp.encode(im)
    decoded[name] = [im] + [odp.decode(odp.truncate(whole, bytes=int(b * im.width * im.height / 8))) for b in BUDGETS]
rows = []
for name, box, label in CASES:
    w, h = box[2] - box[0], box[3] - box[1]
    row = Image.new("RGB", (3 * w + 20, h + 18), "white")
    for i, im in enumerate(decoded[name]):
        row.paste(im.crop(box), (i * (w + 10), 18))
    ImageDraw.Draw(row).text((2, 2), f"{label} ({name}): original | {BUDGETS[0]} bpp | {BUDGETS[1]} bpp", fill="black")
    rows.append(row)
sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), "white")
y = 0
for r in rows:
    sheet.paste(r, (0, y))
    y += r.height + 6
out = Path(__file__).parent / "failure-cases.png"
sheet.save(out, optimize=True)
print(out)
