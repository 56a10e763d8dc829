"""`odp tui`: browse a folder and see ODP beside JPEG, WebP and AVIF at no more bytes.

All coding runs in a background thread, one job at a time (tui/compare.py); the UI
only draws what it posts. Starting new work makes the old stale: it stops at its next
step, and a generation number drops anything it still posts.
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from PIL import Image
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Container, Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from ..formats.files import write_new
from .files import describe, find_images

PANES = ("original", "odp", "jpeg", "webp", "avif", "hull")
METRIC_NAMES = {"psnr": "PSNR", "ms-ssim": "MS-SSIM", "lpips-alex": "LPIPS"}
SAMPLE_FIGURES = ["99,999 B", "0.0000 bpp", "PSNR 00.00 dB", "MS-SSIM 0.000", "LPIPS 0.000"]
MAX_TOKENS = 256  # until the model is loaded and says otherwise


def image_class(graphics: str = "auto"):
    """The textual-image widget to draw with. `auto` takes Kitty or Sixel graphics when the
    terminal answered for them (asked when textual_image.widget is imported, so import this
    module before the app starts), else coloured half-blocks, which work in tmux and in 256
    colours; textual-image's grey-shade fallback for non-terminals is never wanted here."""
    from textual_image import widget as ti
    from textual_image.renderable import UnicodeImage

    chosen = {"halfcell": ti.HalfcellImage, "sixel": ti.SixelImage, "tgp": ti.TGPImage}.get(graphics, ti.Image)
    if getattr(chosen, "_Renderable", None) is UnicodeImage:
        chosen = ti.HalfcellImage
    return chosen


def figures(shown, width: int, height: int, original: bool = False) -> list[str]:
    """A pane's numbers: file size, bpp, and the metrics (n/a where undefined)."""
    if shown.pixels is None:
        return [shown.note]
    if original:
        return [f"{width}×{height}", f"file {shown.nbytes:,} B"]
    scores = [f"{METRIC_NAMES.get(m, m)} " + ("n/a" if v != v else f"{v:.2f} dB" if m == "psnr" else f"{v:.3f}")
              for m, v in (shown.scores or {}).items()]
    size = [f"{shown.nbytes:,} B", f"{shown.nbytes * 8 / (width * height):.4f} bpp"]
    return size if shown.scores is None else size + (scores or ["scoring…"])  # None: no original to score against


def pack(items: list[str], width: int) -> str:
    """Items on as few lines as fit `width`, never splitting one: readable in a narrow pane too."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 3 + len(item) <= width:
            lines[-1] += " · " + item
        else:
            lines.append(item)
    return "\n".join(lines)


class Pane(Vertical):
    """One codec's picture and numbers. Clicking the picture zooms there (1:1, every pane alike)."""

    def __init__(self, key: str, title: str, image_widget) -> None:
        super().__init__(id=f"pane-{key}", classes="pane")
        self.key, self.title, self.image_widget = key, title, image_widget
        self.shown = None
        self.items: list[str] = []
        self.crop: tuple[int, int, int, int] | None = None  # left, top, width, height shown when zoomed

    def compose(self) -> ComposeResult:
        yield Static("", classes="caption")
        with Container(classes="box"):
            yield self.image_widget(id=f"img-{self.key}")

    def clear(self, note: str = "…") -> None:
        self.shown, self.items = None, [note]
        self.border_title = self.title
        self.query_one(".caption", Static).update(note)
        self.query_one(f"#img-{self.key}").image = None

    def show(self, shown, width: int, height: int) -> None:
        self.shown = shown
        self.items = figures(shown, width, height, self.key == "original")
        if shown.pixels is None or shown.label.startswith(self.title):
            self.border_title = self.title if shown.pixels is None else shown.label
        else:
            self.border_title = f"{self.title}: {shown.label}"
        self.query_one(".caption", Static).update(Text(pack(self.items, self.content_size.width or 40)))
        self.draw()

    def draw(self) -> None:
        """Put the picture (or the zoom crop) in the box; called again when the zoom or the size changes."""
        img = self.query_one(f"#img-{self.key}")
        if self.shown is None or self.shown.pixels is None:
            img.image = None
            return
        im = Image.fromarray(self.shown.pixels)
        app = self.app
        cells = app.zoom_cells()
        self.crop = None
        if not cells:  # not laid out yet: on_resize draws again
            return
        pw, ph = app.pixels_per_cell()
        if app.zoom:
            w, h = min(im.width, cells[0] * pw), min(im.height, cells[1] * ph)
            left = min(max(0, round(app.centre[0] * im.width - w / 2)), im.width - w)
            top = min(max(0, round(app.centre[1] * im.height - h / 2)), im.height - h)
            self.crop = (left, top, w, h)
            im = im.crop((left, top, left + w, top + h))
            scale = 1.0
        else:
            scale = min(cells[0] * pw / im.width, cells[1] * ph / im.height)
        # an explicit size in cells, the same in every pane (auto sizing would follow each box, and
        # the grid's boxes differ by a cell)
        img.styles.width = max(1, round(im.width * scale / pw))
        img.styles.height = max(1, round(im.height * scale / ph))
        img.image = im

    def on_resize(self) -> None:
        """Same caption height in every pane (as many lines as the longest figures need), so that
        the pictures are the same size side by side."""
        cap = self.query_one(".caption", Static)
        cap.styles.height = pack(SAMPLE_FIGURES, self.content_size.width or 40).count("\n") + 1
        cap.update(Text(pack(self.items, self.content_size.width or 40)))
        self.call_after_refresh(self.draw)

    def on_click(self, event) -> None:
        img = self.query_one(f"#img-{self.key}")
        r = img.region
        if self.shown is None or self.shown.pixels is None or not r.contains(event.screen_x, event.screen_y):
            return
        fx, fy = (event.screen_x - r.x + 0.5) / r.width, (event.screen_y - r.y + 0.5) / r.height
        h, w = self.shown.pixels.shape[:2]
        if self.crop:  # already zoomed: move the centre to the clicked pixel of the crop
            left, top, cw, ch = self.crop
            fx, fy = (left + fx * cw) / w, (top + fy * ch) / h
        self.app.zoom_to(fx, fy)


class Slider(Widget):
    """The truncation points of an .odp file as ticks on a track; the marker is what is decoded now."""

    DEFAULT_CSS = "Slider { height: 2; }"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.points: list[tuple[int, int]] = []  # (tokens, file bytes) at each layer boundary
        self.tokens = 0

    def set(self, points, tokens: int) -> None:
        self.points, self.tokens = points, tokens
        self.refresh()

    def _x(self, i: int, width: int) -> int:
        """Where point i sits: evenly spaced, a whole number of cells apart."""
        n = max(1, len(self.points) - 1)
        return i * max(1, (width - 1) // n) if width - 1 >= n else round(i * (width - 1) / n)

    def render(self) -> Text:
        width = max(8, self.size.width)
        if not self.points:
            return Text("")
        track = ["─"] * width
        for i in range(len(self.points)):
            track[self._x(i, width)] = "┼"
        at = max([i for i, (k, _) in enumerate(self.points) if k <= self.tokens] or [0])
        line = Text("".join(track), style="dim")
        line.stylize("bold reverse", self._x(at, width), self._x(at, width) + 1)
        return line + Text(f"\n{len(self.points)} truncation points, {self.points[0][1]:,} … "
                           f"{self.points[-1][1]:,} B")

    def on_click(self, event) -> None:
        if self.points and event.y == 0:
            width = max(8, self.size.width)
            i = min(range(len(self.points)), key=lambda i: abs(self._x(i, width) - event.x))
            self.app.set_tokens(self.points[i][0])


class BudgetScreen(ModalScreen):
    """Asks for an exact byte budget; Enter applies it, Escape cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, current: int | None) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Byte budget for every codec:")
            yield Input(str(self.current or ""), placeholder="bytes", type="integer", id="bytes")
            yield Label("Enter to apply, Escape to cancel", classes="hint")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        value = int(event.value) if event.value.strip().isdigit() else 0
        if value < 1:
            self.notify("a budget is a whole number of bytes, at least 1", severity="error")
            return
        self.dismiss(value)


class OdpTui(App):
    """Browse images (and .odp files); compare ODP with the classic codecs at the same bytes."""

    TITLE = "odp tui"
    ENABLE_COMMAND_PALETTE = False  # its footer entry does not fit 80 columns, and it adds nothing here
    CSS = """
    #files { width: 24; height: 1fr; border: none; border-right: solid $primary-darken-2;
             text-wrap: nowrap; text-overflow: ellipsis; }
    #right { width: 1fr; }
    #status { height: auto; padding: 0 1; background: $boost; }
    #work { height: 1; padding: 0 1; }
    #work Static { width: 1fr; }
    #work ProgressBar { width: auto; }
    #grid { grid-size: 3 2; grid-gutter: 0 1; }
    #single { display: none; }
    #info { height: auto; padding: 0 1; }
    #single .pane { height: 1fr; }
    #error { display: none; color: $error; padding: 1 2; text-style: bold; }
    .pane { border: none; border-top: solid $primary-darken-2; border-title-color: $text;
            border-title-style: bold; }
    .caption { height: auto; color: $text-muted; }
    .box { height: 1fr; align: center middle; }
    .box > * { width: auto; height: auto; }
    BudgetScreen { align: center middle; }
    #dialog { width: 60; height: auto; border: thick $accent; padding: 1 2; background: $surface; }
    .hint { color: $text-muted; }
    """
    BINDINGS = [
        Binding("plus,equals_sign", "step(1)", "tokens", key_display="+/-"),
        Binding("minus", "step(-1)", "fewer tokens", show=False),
        Binding("right_square_bracket", "double(2)", "×2", key_display="[/]"),
        Binding("left_square_bracket", "double(0.5)", "half", show=False),
        Binding("b", "budget", "bytes"),
        Binding("z", "zoom", "zoom"),
        Binding("h", "hull", "hull"),
        Binding("s", "save", "save"),
        Binding("f", "files", "files"),
        Binding("q", "quit", "quit"),
        Binding("shift+left", "pan(-1, 0)", "pan", show=False),
        Binding("shift+right", "pan(1, 0)", "pan", show=False),
        Binding("shift+up", "pan(0, -1)", "pan", show=False),
        Binding("shift+down", "pan(0, 1)", "pan", show=False),
    ]

    def __init__(self, folder: Path, tokens: int = 256, out: Path = Path("."), fast: bool = False,
                 graphics: str = "auto", device: str = "auto", lpips: bool | None = None) -> None:
        super().__init__()
        self.folder, self.out, self.fast, self.device = Path(folder), Path(out), fast, device
        self.files = find_images(self.folder)
        self.image_widget = image_class(graphics)
        self.tokens = tokens                  # ODP tokens per tile for photos (sets the budget)
        self.max_bytes: int | None = None     # or an exact budget typed with `b`
        self.budget: int | None = None        # the budget in force, in bytes
        self.odp_tokens: int | None = None    # what ODP keeps within it
        self.file_tokens: dict[Path, int] = {}  # per .odp file: the truncation shown
        self.hull, self.zoom, self.centre = True, False, (0.5, 0.5)
        self.lpips = lpips
        self.items: dict[Path, object] = {}   # opened Photo / OdpFile, most recent last
        self.current: Path | None = None
        self.item = None
        self.error: str | None = None
        self.gen = 0
        self.lock = threading.Lock()  # one coding job at a time: two would fight over 2 CPU cores
        self.threads: list[threading.Thread] = []
        self._timer = None

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield OptionList(*self.file_options(), id="files")
            with Vertical(id="right"):
                yield Static(id="status")
                with Horizontal(id="work"):
                    yield Static("", id="step")
                    yield ProgressBar(total=1, show_eta=False, show_percentage=False, id="progress")
                with Grid(id="grid"):
                    for key in PANES:
                        yield Pane(key, {"original": "original", "odp": "ODP", "jpeg": "JPEG", "webp": "WebP",
                                         "avif": "AVIF", "hull": "hull"}[key], self.image_widget)
                with Vertical(id="single"):
                    yield Static(id="info")
                    yield Slider(id="slider")
                    yield Pane("file", "ODP", self.image_widget)
                yield Static(id="error")
        yield Footer()

    def file_options(self) -> list[Option]:
        """File names under a heading per folder (headings cannot be picked); option id = index in files."""
        out, folder = [], None
        for i, p in enumerate(self.files):
            parent = p.parent.relative_to(self.folder) if p != self.folder else Path(".")
            if parent != folder and str(parent) != ".":
                out.append(Option(Text(f"{parent}/", style="bold"), disabled=True))
            folder = parent
            out.append(Option(Text(p.name, no_wrap=True, overflow="ellipsis"), id=str(i)))
        return out

    def on_resize(self, event) -> None:
        """The file list takes what its names need, less on a narrow terminal (they end in … then)."""
        longest = max((len(p.name) for p in self.files), default=10)
        self.query_one("#files").styles.width = min(longest + 5, 32 if event.size.width >= 120 else 22)

    def zoom_cells(self) -> tuple[int, int] | None:
        """The zoom crop in cells: the smallest picture box of the panes shown, so every crop is the same."""
        boxes = [p.query_one(".box").content_size for p in self.query(Pane) if p.display and p.parent.display]
        boxes = [b for b in boxes if b.width and b.height]
        return (min(b.width for b in boxes), min(b.height for b in boxes)) if boxes else None

    def pixels_per_cell(self) -> tuple[int, int]:
        """Image pixels one terminal cell shows at 1:1: 1×2 with half-blocks, 1×1 with text, the cell's
        pixels with Kitty or Sixel graphics. Told by the renderer the widget draws with, never by the
        widget's name: in auto mode the widget is textual-image's `AutoImage` (or its Sixel `Image`)
        whatever it draws with, half-blocks in tmux and plain terminals included."""
        from textual_image.renderable import HalfcellImage, UnicodeImage

        renderer = getattr(self.image_widget, "_Renderable", None)
        if renderer is HalfcellImage:
            return 1, 2
        if renderer is UnicodeImage:
            return 1, 1
        from textual_image._terminal import get_cell_size

        size = tuple(get_cell_size())
        return size if all(size) else (1, 2)  # a terminal that reports 0x0 cells

    def on_mount(self) -> None:
        self.panes = {key: self.query_one(f"#pane-{key}", Pane) for key in PANES}
        for p in [*self.panes.values(), self.query_one("#pane-file", Pane)]:
            p.clear("")
        files = self.query_one("#files", OptionList)
        if not self.files:
            self.show_error(self.gen, None, f"{self.folder}: no images or .odp files here")
            return
        files.focus()
        files.highlighted = next(i for i, o in enumerate(files.options) if not o.disabled)
        self.select(self.files[0])

    # ------------------------------------------------------------------ state -> work

    @on(OptionList.OptionHighlighted, "#files")
    def highlighted(self, event: OptionList.OptionHighlighted) -> None:
        """Browsing with the arrow keys: start once the highlight rests a moment."""
        path = self.files[int(event.option.id)]
        if path == self.current:
            return
        if self._timer:
            self._timer.stop()
        self._timer = self.set_timer(0.2, lambda: self.select(path))

    def select(self, path: Path) -> None:
        self.current, self.item, self.error = path, None, None
        self.budget = self.odp_tokens = None
        self.query_one("#pane-original", Pane).clear()
        self.recompute()

    def recompute(self) -> None:
        """Start (or restart) the work for the current file and budget."""
        if self.current is None:
            return
        self.gen += 1
        self.odp_tokens = None  # until this work's ODP file is shown
        for key in PANES[1:]:  # their figures belong to the old budget: never show them as current
            self.panes[key].clear()
        self.query_one("#pane-file", Pane).clear()
        self.panes["hull"].display = self.hull
        steps = 3 + 2 * (3 + self.hull)  # the updates Photo.run yields: original, ODP twice, 2 per codec
        self.query_one("#progress", ProgressBar).update(total=steps, progress=0)
        self.query_one("#step", Static).update("opening…" if self.current not in self.items else "working…")
        self.update_status()
        args = (self.gen, self.current, self.tokens, self.max_bytes, self.hull, self.file_tokens.get(self.current))
        self.threads = [t for t in self.threads if t.is_alive()]
        self.threads.append(threading.Thread(target=self.compute, args=args, daemon=True))
        self.threads[-1].start()

    def compute(self, gen: int, path: Path, tokens: int, max_bytes: int | None, hull: bool,
                file_tokens: int | None) -> None:
        """The work, in a daemon thread: `q` must not wait for a slow encode (AVIF at speed 0 takes
        seconds), and Textual's thread workers would hold the exit until theirs finish. Work that
        a newer job has replaced (gen moved on) stops at its next step."""
        from .compare import OdpFile, open_any

        def post(fn, *args) -> bool:
            """Run fn on the UI thread; False when this work is stale or the app has closed."""
            if gen != self.gen:
                return False
            try:
                self.call_from_thread(fn, gen, *args)
            except RuntimeError:  # the app is no longer running
                return False
            return True

        with self.lock:
            if gen != self.gen:
                return
            try:
                item = self.items.get(path)
                if item is None:
                    names = ("psnr", "ms-ssim") + (("lpips-alex",) if self.want_lpips() else ())
                    item = open_any(path, names, self.fast, self.device)
                    self.items = {k: v for k, v in list(self.items.items())[-2:]} | {path: item}  # keep 3
                    for w in item.warnings:
                        post(self.warn, f"{path.name}: {w.message}")
                if isinstance(item, OdpFile):
                    k = item.tokens_within(max_bytes) if max_bytes is not None else file_tokens or item.kept
                    if post(self.show_file, item, k) and k is not None:
                        post(self.show_file, item, k, item.at(k))
                    return
                for u in item.run(tokens, max_bytes, hull):
                    if not post(self.show_update, item, u):
                        return
            except Exception as e:  # a broken file can make a library fail in any way: show it, carry on
                post(self.show_error, path, describe(e))

    def warn(self, gen: int, message: str) -> None:
        self.notify(message, severity="warning")

    async def idle(self) -> None:
        """Wait until no coding work runs (for tests and screenshots)."""
        while any(t.is_alive() for t in self.threads):
            await asyncio.sleep(0.05)

    def want_lpips(self) -> bool:
        if self.lpips is None:
            try:
                from ..codec.evaluation import perceptual
            except ImportError:  # LPIPS needs torch (pip install 'odp[bench]'); PSNR and MS-SSIM do not
                self.lpips = False
            else:
                self.lpips = perceptual.available()
        return self.lpips

    # ------------------------------------------------------------------ results -> screen

    def show_update(self, gen: int, item, u) -> None:
        if gen != self.gen:
            return
        self.item = item
        self.query_one("#grid").display = True
        self.query_one("#single").display = False
        self.query_one("#error").display = False
        if u.pane == "odp":
            self.odp_tokens = u.shown.tokens
        if u.budget is not None:
            self.budget = u.budget
        self.panes[u.pane].show(u.shown, item.width, item.height)
        bar = self.query_one("#progress", ProgressBar)
        bar.advance(1)
        self.query_one("#step", Static).update("ready" if u.next == "done" else f"working: {u.next}…")
        self.update_status()

    def show_file(self, gen: int, item, k: int | None, shown=None) -> None:
        if gen != self.gen:
            return
        self.item = item
        self.query_one("#grid").display = False
        self.query_one("#single").display = True
        self.query_one("#error").display = False
        self.query_one("#info", Static).update(Text("\n".join(item.info)))
        if k is None:
            self.query_one("#pane-file", Pane).clear(f"no truncation fits {self.max_bytes} B")
            self.query_one("#step", Static).update("ready")
            return
        self.file_tokens[item.path] = k
        self.budget = shown.nbytes if shown else None
        self.query_one("#slider", Slider).set(item.points, k)
        if shown is not None:
            self.query_one("#pane-file", Pane).show(shown, *item.size)
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=1, progress=1 if shown else 0)
        self.query_one("#step", Static).update("ready" if shown else "working: decoding…")
        self.update_status()

    def show_error(self, gen: int, path: Path | None, message: str) -> None:
        if gen != self.gen:
            return
        self.error = f"{path.name}: {message}" if path else message
        self.query_one("#grid").display = False
        self.query_one("#single").display = False
        err = self.query_one("#error", Static)
        err.display = True
        err.update(Text(f"cannot show {self.error}"))
        self.query_one("#step", Static).update("error")
        self.update_status()

    def update_status(self) -> None:
        if self.current is None:
            return
        parts = [self.current.name]
        item = self.item
        if self.error:
            parts.append("error")
        elif self.is_file():
            k = self.file_tokens.get(self.current)
            parts.append(f"{k} of {item.kept} tokens" if k else "no truncation fits")
        else:
            parts.append(f"ODP {self.now_tokens()} tokens")
        if self.budget is not None and item is not None and not self.is_file() and not self.error:
            parts.append(f"budget {self.budget:,} B = {self.budget * 8 / (item.width * item.height):.4f} bpp"
                         + (" (typed)" if self.max_bytes is not None else ""))
        if self.zoom:
            parts.append("zoom 1:1")
        lines = [" │ ".join(parts)]
        if item is not None and not self.is_file() and not self.error:
            lines.append(pack(self.sizes(), self.query_one("#status").content_size.width or 80))
        self.query_one("#status", Static).update(Text("\n".join(lines)))

    def sizes(self) -> list[str]:
        """Each pane's real bytes: a typed budget is a ceiling, and ODP's whole file may stop well below it."""
        out = []
        for key, pane in self.panes.items():
            s = pane.shown
            if key == "original" or not pane.display:
                continue
            if s is None:
                out.append(f"{pane.title} …")
            elif s.pixels is None:
                out.append(f"{pane.title} " + ("none fits" if "fits" in s.note else "n/a"))
            else:
                out.append(f"{pane.title} {s.nbytes:,} B" + (" (whole file)" if s.whole else ""))
        return out

    # ------------------------------------------------------------------ actions

    def set_tokens(self, k: int) -> None:
        top = self.item.kept if self.is_file() else getattr(self.item, "max_tokens", MAX_TOKENS)
        k = max(1, min(k, top))
        self.max_bytes = None
        if self.is_file():
            self.file_tokens[self.current] = k
        else:
            self.tokens = k
        self.recompute()

    def is_file(self) -> bool:
        return type(self.item).__name__ == "OdpFile"

    def now_tokens(self) -> int:
        if self.is_file():
            return self.file_tokens.get(self.current, self.item.kept)
        return self.odp_tokens or self.tokens  # what ODP shows: more than its whole file keeps gives that file

    def action_step(self, direction: int) -> None:
        """Eight tokens per tile up or down; past the first stage's whole file, a quarter more or less bytes."""
        if self.past_first_stage(direction):
            return self.set_bytes(self.budget * (1.25 if direction > 0 else 0.8))
        k = self.now_tokens()
        self.set_tokens((k // 8 + 1) * 8 if direction > 0 else max(1, (k - 1) // 8 * 8))

    def action_double(self, factor: float) -> None:
        if self.past_first_stage(factor - 1):
            return self.set_bytes(self.budget * factor)
        self.set_tokens(max(1, int(self.now_tokens() * factor)))

    def past_first_stage(self, direction: float) -> bool:
        """Whether a step goes by bytes: a photo's budget already typed or stepped in bytes, or a step up
        from the first stage's whole file (the refinement stage after it has no tokens of its own to count)."""
        if self.is_file() or self.budget is None:
            return False
        at_top = self.now_tokens() >= getattr(self.item, "max_tokens", MAX_TOKENS)
        return self.max_bytes is not None or (direction > 0 and at_top)

    def set_bytes(self, budget: float) -> None:
        self.max_bytes = max(1, int(budget))
        self.recompute()

    def action_budget(self) -> None:
        def apply(value: int | None) -> None:
            if value is not None:
                self.max_bytes = value
                self.recompute()
        self.push_screen(BudgetScreen(self.budget), apply)

    def action_zoom(self) -> None:
        self.zoom = not self.zoom
        self.redraw()

    def zoom_to(self, fx: float, fy: float) -> None:
        self.zoom, self.centre = True, (min(max(fx, 0.0), 1.0), min(max(fy, 0.0), 1.0))
        self.redraw()

    def action_pan(self, dx: int, dy: int) -> None:
        if self.zoom:
            self.zoom_to(self.centre[0] + 0.1 * dx, self.centre[1] + 0.1 * dy)

    def redraw(self) -> None:
        for p in [*self.panes.values(), self.query_one("#pane-file", Pane)]:
            p.draw()
        self.update_status()

    def action_files(self) -> None:
        """Hide or show the file list: more room for the pictures on a small terminal."""
        files = self.query_one("#files")
        files.display = not files.display
        if files.display:
            files.focus()

    def action_hull(self) -> None:
        self.hull = not self.hull
        self.recompute()

    def action_save(self) -> None:
        if self.item is None or self.error:
            self.notify("nothing to save yet", severity="warning")
            return
        panes = [self.query_one("#pane-file", Pane)] if self.is_file() else list(self.panes.values())
        shown = panes[0].shown if self.is_file() else self.panes["odp"].shown
        if shown is None or shown.data is None:
            self.notify("no ODP file at this budget yet", severity="warning")
            return
        h, w = shown.pixels.shape[:2]
        cells = [([p.border_title] + pack(p.items, max(24, w // 9)).split("\n"), p.shown)
                 for p in panes if p.display and p.shown is not None and p.shown.pixels is not None]
        self.save(self.current, shown, cells)

    @work(thread=True, group="save")
    def save(self, path: Path, shown, cells) -> None:
        """Write the ODP file and the comparison PNG, never over an existing file."""
        from .compare import png_bytes, sheet

        try:
            stem = self.out / f"{path.stem}.{shown.tokens}t"
            odp = write_new(Path(f"{stem}.odp"), shown.data)
            png = write_new(Path(f"{stem}.compare.png"), png_bytes(sheet(cells)))
            self.call_from_thread(self.notify, f"saved {odp} and {png}")
        except Exception as e:
            self.call_from_thread(self.notify, f"save failed: {describe(e)}", severity="error")
