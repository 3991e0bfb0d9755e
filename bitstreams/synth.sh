#!/usr/bin/env bash
# Synthesizes the card's RTL for an iCE40 HX8K (ct256) with yosys and places and routes it with
# nextpnr-ice40 (Debian packages yosys, nextpnr-ice40), then rewrites bitstreams/report.md with
# logic cells, block RAM and nextpnr's "Max frequency" line. Target: >= 60 MHz.
# Usage: bitstreams/synth.sh            (installs yosys and nextpnr-ice40 if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v yosys >/dev/null || need+=(yosys)
command -v nextpnr-ice40 >/dev/null || need+=(nextpnr-ice40)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "synth: installing ${need[*]}"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
FREQ_MHZ=60
# Each entry: top module, parameters (yosys chparam), RTL files. Tops whose ports exceed the
# package's pins go through a wrapper in bitstreams/wrap (named *_syn).
card_rtl="hdl-model/rtl/amf_crc_pkg.sv hdl-model/rtl/amf_regs.sv hdl-model/rtl/amf_cmd_fetch.sv hdl-model/rtl/amf_ring_writer.sv hdl-model/rtl/amf_dma_arb.sv hdl-model/rtl/amf_siphash.sv hdl-model/rtl/amf_frame_check.sv hdl-model/rtl/amf_frame_tx.sv hdl-model/rtl/amf_sharer_table.sv hdl-model/rtl/amf_engine.sv hdl-model/rtl/amf_card.sv"
tops=(
  "amf_engine_syn|-set Inflight 2 -set TableSetsLog2 4 -set TableWays 2 -set Nodes 4|hdl-model/rtl/amf_sharer_table.sv hdl-model/rtl/amf_engine.sv bitstreams/wrap/amf_engine_syn.sv"
  "amf_card_syn|-set Inflight 2 -set TableSetsLog2 4 -set TableWays 2 -set Nodes 4|$card_rtl bitstreams/wrap/amf_card_syn.sv"
  "amf_sharer_table|-set SetsLog2 6 -set Ways 4|hdl-model/rtl/amf_sharer_table.sv"
  "amf_frame_check_syn||hdl-model/rtl/amf_crc_pkg.sv hdl-model/rtl/amf_siphash.sv hdl-model/rtl/amf_frame_check.sv bitstreams/wrap/amf_frame_check_syn.sv"
)
{
  echo "# Synthesis report (iCE40 HX8K)"
  echo
  echo "Produced by \`bitstreams/synth.sh\` with $(yosys -V | head -1 | cut -d' ' -f1-2) and"
  echo "$(nextpnr-ice40 --version 2>&1 | head -1); target clock ${FREQ_MHZ} MHz, device hx8k, package ct256,"
  echo "IO pins placed automatically. Re-run the script to regenerate this file."
  echo
  echo "| top | parameters | logic cells (used/ available) | block RAM (used/ available) | max frequency |"
  echo "|---|---|---|---|---|"
} > "$out/report.md"
for t in "${tops[@]}"; do
  IFS='|' read -r top params files <<<"$t"
  yosys -q -l "$out/$top.yosys.log" -p "read_verilog -sv hdl-model/gen/sv/amf_regs_pkg.sv hdl-model/gen/sv/amf_structs_pkg.sv $files; ${params:+chparam $params $top;} synth_ice40 -top $top -json $out/$top.json; stat"
  nextpnr-ice40 --hx8k --package ct256 --json "$out/$top.json" --freq "$FREQ_MHZ" --asc "$out/$top.asc" -q -l "$out/$top.pnr.log" 2>/dev/null || true
  if grep -qE 'Max frequency for clock' "$out/$top.pnr.log" 2>/dev/null; then
    lc=$(grep -E '^Info:[[:space:]]+ICESTORM_LC:' "$out/$top.pnr.log" | tail -1 | awk '{print $3 " " $4}')
    ram=$(grep -E '^Info:[[:space:]]+ICESTORM_RAM:' "$out/$top.pnr.log" | tail -1 | awk '{print $3 " " $4}')
    fmax=$(grep -E 'Max frequency for clock' "$out/$top.pnr.log" | tail -1 | sed -E 's/.*: ([0-9.]+ MHz \([A-Z]+ at [0-9.]+ MHz\)).*/\1/')
    echo "| $top | ${params//-set /} | $lc | $ram | $fmax |" >> "$out/report.md"
    grep -E 'Max frequency for clock' "$out/$top.pnr.log" | tail -1 | sed -E 's/^(Info|ERROR): /    nextpnr: /' >> "$out/lines.txt"
  else
    # Did not place: say how much yosys mapped, from its statistics.
    luts=$(grep -E '^[[:space:]]+SB_LUT4[[:space:]]' "$out/$top.yosys.log" | tail -1 | awk '{print $2}')
    ffs=$(awk '/Number of cells/ {n = 0} /^[[:space:]]+SB_DFF[A-Z]*[[:space:]]/ {n += $2} END {print n}' "$out/$top.yosys.log")
    ram=$(grep -E '^[[:space:]]+SB_RAM40_4K[[:space:]]' "$out/$top.yosys.log" | tail -1 | awk '{print $2}')
    echo "| $top | ${params//-set /} | does not fit: yosys maps ${luts:-?} LUT4 and ${ffs:-?} flip-flops (7680 logic cells) | ${ram:-0}/ 32 | not placed |" >> "$out/report.md"
    echo "    nextpnr ($top): $(grep -iE 'error' "$out/$top.pnr.log" | head -1)" >> "$out/lines.txt"
  fi
done
{
  echo
  echo "nextpnr's lines, verbatim:"
  echo
  cat "$out/lines.txt"
} >> "$out/report.md"
cp "$out/report.md" bitstreams/report.md
cat bitstreams/report.md
