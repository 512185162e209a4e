"""Training: segmentation pretraining of S and the ColorMedGAN CycleGAN (G, F, Dx, Dy).

    trainer.train(cfg)                   CycleGAN run; resumes from `cfg.train.run_dir` when it holds a checkpoint
    seg_pretrain.pretrain_segmenter(cfg) S on labelled MR shards; exports `<cfg.seg.run_dir>/export/seg.pt`

Module map: jobframe.py (the frame every entry point runs in: logging, backend, stop flag, exit status),
rundir.py (the run directory and the checkpoint to resume from), loop.py (the training loop both stages run, with its
step-boundary agreement and checkpoint clock; each stage passes in its model-specific parts), distributed.py (the
one seam to DDP/DeepSpeed, devices, precision), step.py (one step, values in, values out), image_pool.py,
schedule.py, ema.py, state.py (RNG capture), stop.py (signals -> agreed stop), monitor.py (progress, metrics,
sample grids); full-state checkpoints live in `cmgan.checkpoint`, the exports of G and S in `cmgan.export` and
`cmgan.seg_export`, S's loss in `cmgan.losses.segmentation`.
"""
