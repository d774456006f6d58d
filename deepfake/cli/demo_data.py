"""``deepfake demo-data``: the synthetic dataset."""

from __future__ import annotations

import click

from deepfake.cli.app import main


@main.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--per-class", default=None, type=click.IntRange(min=10),
              help="Images (videos with --video) per class over all splits (split 70/15/15). "
                   "[default: 300 images, 40 videos]")
@click.option("--size", default=64, show_default=True, type=click.IntRange(min=32),
              help="Image side in pixels; with --video the face's size, the picture a face detector crops "
                   "(frames 4 x SIZE wide and 2/3 as high).")
@click.option("--video", is_flag=True,
              help="Write face videos instead (MP4, H.264, 16 frames at 8 fps): a face drifting over a moving "
                   "background; in the fakes the face is swapped (re-synthesised at half resolution, upsampled, "
                   "blended back).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed; the same seed writes the same bytes.")
def demo_data(out: str, per_class: int | None, size: int, video: bool, seed: int) -> None:
    """Write a deterministic synthetic dataset to OUT/{train,val,test}/{real,fake}/.

    "Real" images follow natural-image statistics with camera noise and JPEG compression;
    "fake" ones carry generator traces (low-resolution synthesis plus upsampling, which leaves
    periodic spectral peaks). Good for trying the whole pipeline on any machine, offline.

    With --video: short MP4 videos of a synthetic face on a moving background, real ones with
    camera noise, fake ones with the face swapped, for data.faces and data.video.
    """
    if video:
        from deepfake.demo import make_demo_video_dataset

        width = 4 * size
        counts = make_demo_video_dataset(out, per_class=40 if per_class is None else per_class, width=width,
                                         height=width * 2 // 3 // 2 * 2, seed=seed)
        click.echo(f"Wrote demo video dataset to {out}: {counts}")
        return
    from deepfake.demo import make_demo_dataset

    counts = make_demo_dataset(out, per_class=300 if per_class is None else per_class, size=size, seed=seed)
    click.echo(f"Wrote demo dataset to {out}: {counts}")
