"""A virtual X display for GUI tests: Xvfb, xdotool, and screenshots as PNG.

Screenshots come from ``xwd`` (Debian x11-apps) and are decoded and written
as PNG here with the stdlib, so no image library is needed.
"""

import os
import select
import struct
import subprocess
import time
import zlib
from typing import List, Optional, Tuple

from serverproc import stop_process


class Screenshot:
    def __init__(self, width: int, height: int, rgb: bytes) -> None:
        self.width, self.height, self.rgb = width, height, rgb

    def pixel(self, x: int, y: int) -> Tuple[int, int, int]:
        i = 3 * (y * self.width + x)
        return self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]

    def colours(self, box: Optional[Tuple[int, int, int, int]] = None) -> dict:
        """{(r, g, b): pixel count} over the whole image or box (x0, y0, x1, y1)."""
        x0, y0, x1, y1 = box or (0, 0, self.width, self.height)
        counts: dict = {}
        for y in range(y0, y1):
            row = self.rgb[3 * (y * self.width + x0) : 3 * (y * self.width + x1)]
            for i in range(0, len(row), 3):
                key = (row[i], row[i + 1], row[i + 2])
                counts[key] = counts.get(key, 0) + 1
        return counts

    def crop(self, x0: int, y0: int, x1: int, y1: int) -> "Screenshot":
        rows = [self.rgb[3 * (y * self.width + x0) : 3 * (y * self.width + x1)]
                for y in range(y0, y1)]
        return Screenshot(x1 - x0, y1 - y0, b"".join(rows))

    def save_png(self, path: str) -> None:
        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        stride = 3 * self.width
        raw = b"".join(b"\x00" + self.rgb[y * stride : (y + 1) * stride]
                       for y in range(self.height))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n")
            f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)))
            f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
            f.write(chunk(b"IEND", b""))


def parse_xwd(data: bytes) -> Screenshot:
    """Decode an XWD dump of a TrueColor screen (Xvfb's 24-bit default) to RGB."""
    fields = struct.unpack(">25I", data[:100])
    header_size, version, fmt, depth, width, height = fields[:6]
    byte_order, bits_per_pixel, bytes_per_line = fields[7], fields[11], fields[12]
    masks = fields[14:17]
    ncolors = fields[19]
    if version != 7 or fmt != 2 or bits_per_pixel not in (24, 32):
        raise ValueError(f"unsupported xwd: version {version}, format {fmt}, "
                         f"{bits_per_pixel} bits per pixel, depth {depth}")
    pos = header_size + 12 * ncolors
    step = bits_per_pixel // 8
    order = "little" if byte_order == 0 else "big"
    shifts = [(m & -m).bit_length() - 1 for m in masks]
    out = bytearray(3 * width * height)
    o = 0
    for y in range(height):
        line = data[pos + y * bytes_per_line : pos + y * bytes_per_line + width * step]
        if order == "little" and step == 4 and masks == (0xFF0000, 0xFF00, 0xFF):
            # The usual case, fast: BGRX bytes.
            out[o : o + 3 * width : 3] = line[2::4]
            out[o + 1 : o + 3 * width : 3] = line[1::4]
            out[o + 2 : o + 3 * width : 3] = line[0::4]
            o += 3 * width
            continue
        for x in range(width):
            p = int.from_bytes(line[x * step : x * step + step], order)
            for m, s in zip(masks, shifts):
                out[o] = (p & m) >> s
                o += 1
    return Screenshot(width, height, bytes(out))


class Xvfb:
    """Xvfb on a display it picks itself (-displayfd): no races with other tests."""

    def __init__(self, width: int = 800, height: int = 520) -> None:
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24",
             "-nolisten", "tcp", "-noreset"],
            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        os.close(write_fd)
        # Xvfb writes the number, then a newline in a second write: read up to
        # the newline, or closing the pipe early kills it with a failed write.
        answer = b""
        deadline = time.monotonic() + 20
        try:
            while not answer.endswith(b"\n") and time.monotonic() < deadline:
                ready, _, _ = select.select([read_fd], [], [], 0.5)
                chunk = os.read(read_fd, 64) if ready else b""
                if ready and not chunk:
                    break
                answer += chunk
        finally:
            os.close(read_fd)
        number = answer.decode().strip()
        if not answer.endswith(b"\n") or not number:
            self.stop()
            raise RuntimeError(f"Xvfb did not start: {self.proc.stderr.read().decode()[-500:]}")
        self.display = f":{number}"
        self.env = dict(os.environ, DISPLAY=self.display)

    def run(self, *args: str, timeout: float = 20) -> str:
        out = subprocess.run(list(args), env=self.env, capture_output=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{args} failed: {out.stderr.decode()}")
        return out.stdout.decode()

    def find_window(self, name: str, timeout: float = 20) -> str:
        """The id of a visible window whose title contains ``name``."""
        deadline = time.monotonic() + timeout
        while True:
            found = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", name],
                                   env=self.env, capture_output=True, text=True)
            ids: List[str] = found.stdout.split()
            if ids:
                return ids[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no window named {name!r} appeared")
            time.sleep(0.1)

    def window_geometry(self, window: str) -> Tuple[int, int, int, int]:
        """(x, y, width, height) of a window on the screen."""
        out = self.run("xdotool", "getwindowgeometry", "--shell", window)
        values = dict(line.split("=", 1) for line in out.split())
        return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])

    def click(self, window: str, x: int, y: int) -> None:
        self.run("xdotool", "mousemove", "--window", window, str(x), str(y), "click", "1")

    def screenshot(self) -> Screenshot:
        dump = subprocess.run(["xwd", "-root", "-silent"], env=self.env, capture_output=True,
                              timeout=20, check=True).stdout
        return parse_xwd(dump)

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)

    def __enter__(self) -> "Xvfb":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
