"""Evaluation: comparison scores, EDC curves (both published variants), pAUC, FNMR@FMR, benchmark loaders,
paper-style tables and EDC plots."""
from .datasets import (PREPARED, CorruptEntry, IJBCMeta, ImageSet, Templates, UnsafeBinFile, aggregate_templates,
                       extract_embeddings, ijbc_templates, load_adience, load_bin, load_ijbc, load_ijbc_meta,
                       load_labelled_all_pairs, load_lfw_pairs, load_pair_list, read_ijbc_landmarks, score_image_set,
                       template_quality)
from .edc import REFIT_GRID, EDCCurve, edc_curve, fnmr_at_fmr, pair_quality, pauc, threshold_at_fmr
from .report import evaluate, markdown_table, plot_edc, plot_edc_grid, to_csv, to_latex, to_markdown
from .reproduction import reproduce
from .scores import Pairs, comparison_scores, flip_concat, l2_normalize, masked_comparison_scores

__all__ = ["EDCCurve", "edc_curve", "pauc", "fnmr_at_fmr", "threshold_at_fmr", "pair_quality", "REFIT_GRID",
           "Pairs", "comparison_scores", "masked_comparison_scores", "flip_concat", "l2_normalize", "evaluate",
           "to_markdown", "markdown_table", "to_latex", "plot_edc", "plot_edc_grid", "to_csv", "ImageSet", "CorruptEntry",
           "UnsafeBinFile", "load_bin", "load_pair_list", "PREPARED", "load_lfw_pairs",
           "load_labelled_all_pairs", "load_ijbc_meta", "ijbc_templates", "IJBCMeta", "score_image_set",
           "extract_embeddings",
           "Templates", "aggregate_templates", "template_quality", "load_adience", "load_ijbc", "read_ijbc_landmarks",
           "reproduce"]
