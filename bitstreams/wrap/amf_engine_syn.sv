// Synthesis wrapper for the card's engine (commands, sharer table, pending operations, conflict
// ordering, answers, heartbeats) with a small configuration. Its 256-bit command and frame inputs
// and its configuration words come from one shift register fed by a pin, and the wide outputs
// leave as parity bits (an HX8K has ~200 pins); the shift register's 256 flip-flops are in the
// count. Only for the resource and fmax report.
module amf_engine_syn #(
  parameter int unsigned Inflight      = 2,
  parameter int unsigned TableSetsLog2 = 4,
  parameter int unsigned TableWays     = 2,
  parameter int unsigned Nodes         = 4,
  // The small configuration keeps 16 held requests (the full card has 32).
  parameter int unsigned OwedMax       = 16,
  // 4096 presence buckets: one iCE40 block RAM as 4096 x 1 (the full card has 16384).
  parameter int unsigned PresenceLog2  = 12
) (
  input  logic       clk_i,
  input  logic       rst_ni,
  input  logic       wide_bit_i,
  input  logic       clear_i,
  input  logic       enable_i,
  input  logic       cmd_valid_i,
  output logic       cmd_ready_o,
  output logic       cpl_valid_o,
  input  logic       cpl_ready_i,
  output logic       evt_valid_o,
  input  logic       evt_ready_i,
  input  logic       rx_valid_i,
  output logic       rx_ready_o,
  output logic       tx_valid_o,
  input  logic       tx_ready_i,
  output logic [3:0] parity_o,
  output logic       busy_o,
  output logic       active_o
);
  logic [255:0] wide_q;
  always_ff @(posedge clk_i) wide_q <= {wide_q[254:0], wide_bit_i};
  // node id, peers, epoch, ack timeout, heartbeat period, completion ring space, event ring room
  logic [115:0] cfg_q;
  assign cfg_q = wide_q[115:0];

  logic [255:0] cpl, evt, tx_frame;
  logic [31:0]  frames_tx, bad_commands, broadcasts, skipped, ack_timeouts, occupancy, full_fallbacks, filtered;
  logic         filter_on;

  amf_engine #(.Inflight(Inflight), .TableSetsLog2(TableSetsLog2), .TableWays(TableWays), .Nodes(Nodes), .OwedMax(OwedMax),
               .PresenceLog2(PresenceLog2)) u_engine (
    .clk_i,
    .rst_ni,
    .clear_i,
    .enable_i,
    .node_id_i          (cfg_q[2:0]),
    .peers_i            (cfg_q[10:3]),
    .epoch_i            (cfg_q[42:11]),
    .ack_timeout_i      (cfg_q[74:43]),
    .heartbeat_period_i (cfg_q[106:75]),
    .cmd_valid_i,
    .cmd_ready_o,
    .cmd_i              (wide_q),
    .cpl_space_i        (cfg_q[114:107]),
    .cpl_valid_o,
    .cpl_ready_i,
    .cpl_o              (cpl),
    .evt_valid_o,
    .evt_ready_i,
    .evt_o              (evt),
    .evt_room_i         (cfg_q[115]),
    .rx_valid_i,
    .rx_ready_o,
    .rx_frame_i         (wide_q),
    .tx_valid_o,
    .tx_ready_i,
    .tx_frame_o         (tx_frame),
    .frames_tx_o        (frames_tx),
    .bad_commands_o     (bad_commands),
    .broadcasts_o       (broadcasts),
    .skipped_o          (skipped),
    .ack_timeouts_o     (ack_timeouts),
    .occupancy_o        (occupancy),
    .full_fallbacks_o   (full_fallbacks),
    .filter_on_o        (filter_on),
    .filtered_o         (filtered),
    .busy_o,
    .active_o
  );

  assign parity_o = {^cpl, ^evt, ^tx_frame,
                     ^{frames_tx, bad_commands, broadcasts, skipped, ack_timeouts, occupancy, full_fallbacks, filtered, filter_on}};
endmodule
