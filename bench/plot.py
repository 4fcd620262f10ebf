#!/usr/bin/python3
"""Draw bench/growth.png from bench/results.json: one more pod's ADD and DEL latency against live pods, ours
against the reference, the ADD growth of ours and the floor's read against their twins kept at the first level, and
the nftables rules on the node at each point. Uses Debian's python3-matplotlib."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(results_path, png_path):
    with open(results_path) as f:
        results = json.load(f)
    fig, (lat, grow, rules) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [3, 2, 2]})
    styles = {"ours_chain": ("tab:green", "ours"), "ref_ptp_masq": ("tab:red", "reference"), "floor": ("tab:gray", "floor")}
    for key, series in results["growth"].items():
        color, short = styles.get(key, ("tab:gray", key))
        live = [level["live"] for level in series["levels"]]
        for verb, marker, dash in (("add", "o", "-"), ("del", "s", "--")):
            medians = [level[verb]["median"] for level in series["levels"]]
            lat.plot(live, medians, dash, marker=marker, color=color, label=f"{short} {verb.upper()}")
        # Growth read against a twin kept at the first level, sampled in the same turns (what the aim reads).
        if all(level.get("alongside") for level in series["levels"]):
            growth = [level["add"]["median"] - level["alongside"]["add"]["median"] for level in series["levels"]]
            grow.plot(live, growth, "-o", color=color, label=short)
        rules.plot(live, [level["rules"] for level in series["levels"]], "-o", color=color, label=short)
    lat.set_xlabel("live pods on the node")
    lat.set_ylabel("median latency of one more pod (ms)")
    lat.set_ylim(bottom=0)
    lat.grid(alpha=0.3)
    lat.legend(fontsize=8)
    lat.set_title("ADD and DEL latency", fontsize=10)
    grow.set_xlabel("live pods on the node")
    grow.set_ylabel("ADD median above the twin's (ms)")
    grow.axhline(0, color="black", linewidth=0.5)
    grow.grid(alpha=0.3)
    grow.legend(fontsize=8)
    grow.set_title("ADD growth, against a twin node kept at the first level", fontsize=9)
    rules.set_xlabel("live pods on the node")
    rules.set_ylabel("nftables rules on the node")
    rules.set_yscale("symlog")
    rules.grid(alpha=0.3)
    rules.legend(fontsize=8)
    rules.set_title("rules", fontsize=10)
    fig.suptitle(results["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
