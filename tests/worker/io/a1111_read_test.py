"""Results read the way AUTOMATIC1111 reads them, with code no one here wrote:
`zfarm-worker generate` renders one image per format on the tiny model, then
Pillow opens it and, for JPEG and WebP, piexif loads its EXIF and decodes the
UserComment (A1111's modules/images.py read_info_from_image path); PNG's
"parameters" text chunk is Pillow's im.info["parameters"]. The XMP packet is
found by Pillow too (WebP chunk, JPEG APP1 segment).

Run by ctest (a1111_read_test) with ZFARM_WORKER_BIN and ZFARM_TINY_MODEL_DIR;
Debian's python3 with python3-pil and python3-piexif.
"""

import json
import os
import subprocess
import tempfile
import unittest

import piexif
import piexif.helper
from PIL import Image

WORKER = os.environ["ZFARM_WORKER_BIN"]
MODEL = os.environ["ZFARM_TINY_MODEL_DIR"]
PROMPT = "a fox in snow \u2014 \u00fc\u00ef <b>&</b>"


class A1111ReadTest(unittest.TestCase):
    def generate(self, fmt, path, *extra):
        r = subprocess.run([WORKER, "generate", "--model", MODEL, "--prompt", PROMPT, "--width",
                            "64", "--height", "64", "--steps", "2", "--seed", "5",
                            "--output-format", fmt, "--out", path] + list(extra),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout)

    def test_every_format(self):
        with tempfile.TemporaryDirectory() as d:
            for fmt, pil_format, ext in (("png", "PNG", "png"), ("jpeg", "JPEG", "jpg"),
                                         ("webp", "WEBP", "webp")):
                with self.subTest(fmt=fmt):
                    path = os.path.join(d, "out." + ext)
                    self.generate(fmt, path)
                    im = Image.open(path)
                    self.assertEqual(im.format, pil_format)
                    self.assertEqual(im.size, (64, 64))
                    im.load()
                    if fmt == "png":
                        text = im.info["parameters"]
                        params = json.loads(im.info["zfarm"])
                    else:
                        exif = piexif.load(im.info["exif"])
                        text = piexif.helper.UserComment.load(
                            exif["Exif"][piexif.ExifIFD.UserComment])
                        if fmt == "webp":
                            xmp = im.info["xmp"]
                        else:
                            xmp = next(data for marker, data in im.applist if marker == "APP1"
                                       and data.startswith(b"http://ns.adobe.com/xap/1.0/"))
                        xmp = xmp.decode("utf-8") if isinstance(xmp, bytes) else xmp
                        self.assertIn("zfarm:parameters", xmp)
                        params = None
                    self.assertTrue(text.startswith(PROMPT + "\nSteps: 2, Sampler: Euler"), text)
                    self.assertIn("Seed: 5, Size: 64x64", text)
                    if params is not None:
                        self.assertEqual(params["seed"], 5)

    def test_quality_is_applied(self):
        with tempfile.TemporaryDirectory() as d:
            low, high = os.path.join(d, "low.jpg"), os.path.join(d, "high.jpg")
            self.generate("jpeg", low, "--quality", "5")
            self.generate("jpeg", high, "--quality", "100")
            self.assertLess(os.path.getsize(low), os.path.getsize(high))
            r = subprocess.run([WORKER, "generate", "--model", MODEL, "--prompt", "x",
                                "--output-format", "png", "--quality", "50", "--out",
                                os.path.join(d, "x.png")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.assertEqual(r.returncode, 2, r.stdout)
            self.assertIn("--quality", r.stdout)


if __name__ == "__main__":
    unittest.main()
