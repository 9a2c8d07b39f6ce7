"""The report's figures (../shared/seed/002_ea45210db194d41f.txt): what each experiment is
measured against. Accuracies as fractions; `auc` is the report's AUC, which is roc_auc_score on
hard predicted labels (ours: test.json's auc_hard_labels); `best_epoch` is 1-based. The
report trained on the original CIFAR files, one run per cell, on an RTX 3050 laptop GPU."""

REPORT = {
    "ex_1": {"cifar10": {"accuracy": 0.7224, "auc": 0.8458, "best_epoch": 13},
             "cifar100": {"accuracy": 0.3465, "auc": 0.6699, "best_epoch": 6}},
    "ex_2": {"cifar10": {"accuracy": 0.7912, "auc": 0.884, "best_epoch": 100},
             "cifar100": {"accuracy": 0.4884, "auc": 0.7416, "best_epoch": 88}},
    "ex_3": {"cifar10": {"accuracy": 0.8600, "auc": 0.9222, "best_epoch": 39},
             "cifar100": {"accuracy": 0.6120, "auc": 0.8040, "best_epoch": 40}},
    "ex_4": {"cifar10": {"accuracy": 0.9624, "auc": 0.9791, "best_epoch": 12},
             "cifar100": {"accuracy": 0.8380, "auc": 0.9182, "best_epoch": 10}},
    "ex_5": {"cifar10": {"accuracy": 0.9614, "auc": 0.9786, "best_epoch": 20},
             "cifar100": {"accuracy": 0.8307, "auc": 0.9145, "best_epoch": 23}},
}
