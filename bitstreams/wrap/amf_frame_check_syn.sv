// Synthesis wrapper: the checker's 384-bit frame port and 128-bit key exceed an HX8K's pins, so
// the frame and the configuration are shifted in serially and the passed-through frame is
// reduced to its parity. Only for the
// resource and fmax report; the card's top will have narrow external ports.
module amf_frame_check_syn (
  input  logic       clk_i,
  input  logic       rst_ni,
  input  logic       in_bit_i,
  input  logic       in_valid_i,
  output logic       out_valid_o,
  output logic       out_parity_o,
  output logic [2:0] out_verdict_o
);
  logic [383:0] shift_q;
  logic [255:0] out_frame;
  logic [172:0] cfg_q;

  always_ff @(posedge clk_i) begin
    shift_q <= {shift_q[382:0], in_bit_i};
    cfg_q   <= {cfg_q[171:0], shift_q[383]};
  end

  logic in_ready_unused, busy_unused;

  // An iCE40 runs the MAC a half SipRound per cycle (amf_siphash).
  amf_frame_check #(.MacHalfRounds(1'b1)) u_check (
    .clk_i,
    .rst_ni,
    .in_valid_i,
    .in_ready_o   (in_ready_unused),
    .in_frame_i   (shift_q),
    .node_id_i    (cfg_q[2:0]),
    .peers_i      (cfg_q[10:3]),
    .epoch_i      (cfg_q[42:11]),
    .auth_en_i    (cfg_q[43]),
    .key_i        (cfg_q[171:44]),
    .restart_i    (cfg_q[172]),
    .out_valid_o,
    .out_ready_i  (1'b1),
    .out_frame_o  (out_frame),
    .out_verdict_o,
    .busy_o       (busy_unused)
  );

  assign out_parity_o = ^{out_frame, in_ready_unused, busy_unused};
endmodule
