// Checks received link frames before the engine acts on them: CRC-32C of bytes 0..27 against the
// crc field, then kind, source and destination mask, then the membership epoch. The verdict order
// is the reference model's (`Card::classify`): a frame is counted under the first check it fails.
// Two pipeline stages (CRC, then classification) take one frame per cycle, so the acks of a
// broadcast to k sharers drain in k cycles, not 8k.

module amf_frame_check (
  input  logic         clk_i,
  input  logic         rst_ni,
  // frame in
  input  logic         in_valid_i,
  output logic         in_ready_o,
  input  logic [255:0] in_frame_i,
  // this node
  input  logic [2:0]   node_id_i,
  input  logic [7:0]   peers_i,
  input  logic [31:0]  epoch_i,
  // verdict out, held until taken
  output logic         out_valid_o,
  input  logic         out_ready_i,
  output logic [255:0] out_frame_o,
  output logic [1:0]   out_verdict_o
);
  // Verdicts (the reference model's order).
  localparam logic [1:0] VerdictOk        = 2'd0;
  localparam logic [1:0] VerdictBadCrc    = 2'd1;
  localparam logic [1:0] VerdictMalformed = 2'd2;
  localparam logic [1:0] VerdictStale     = 2'd3;

  // Stage 1: the frame and its computed CRC. Stage 2: the frame and its verdict.
  logic         s1_valid_q, s2_valid_q;
  logic [255:0] s1_frame_q, s2_frame_q;
  logic [31:0]  s1_crc_q;
  logic [1:0]   s2_verdict_q;
  logic         s1_load, s2_load;

  assign s2_load    = s1_valid_q && (!s2_valid_q || out_ready_i);
  assign s1_load    = in_valid_i && in_ready_o;
  assign in_ready_o = !s1_valid_q || s2_load;

  // The checked fields of stage 1, by position (generated constants; yosys lacks struct casts).
  logic [7:0]  f_kind, f_src, f_dst;
  logic [31:0] f_epoch, f_crc;
  assign f_kind  = s1_frame_q[amf_structs_pkg::LinkFrameKindLsb+:8];
  assign f_src   = s1_frame_q[amf_structs_pkg::LinkFrameSrcLsb+:8];
  assign f_dst   = s1_frame_q[amf_structs_pkg::LinkFrameDstLsb+:8];
  assign f_epoch = s1_frame_q[amf_structs_pkg::LinkFrameEpochLsb+:32];
  assign f_crc   = s1_frame_q[amf_structs_pkg::LinkFrameCrcLsb+:32];

  logic [1:0] verdict;
  always_comb begin
    logic kind_ok;
    // Frame kinds are 1..=8 (amf_structs_pkg::frame_kind_e).
    kind_ok = f_kind >= 8'(amf_structs_pkg::FrameKindAcquireShared)
              && f_kind <= 8'(amf_structs_pkg::FrameKindHeartbeat);
    if ((s1_crc_q ^ 32'hffff_ffff) != f_crc) begin
      verdict = VerdictBadCrc;
    end else if (!kind_ok || f_src[7:3] != '0 || f_src[2:0] == node_id_i || !peers_i[f_src[2:0]]
                 || !f_dst[node_id_i]) begin
      verdict = VerdictMalformed;
    end else if (f_epoch != epoch_i) begin
      verdict = VerdictStale;
    end else begin
      verdict = VerdictOk;
    end
  end

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      s1_valid_q   <= 1'b0;
      s2_valid_q   <= 1'b0;
      s1_frame_q   <= '0;
      s2_frame_q   <= '0;
      s1_crc_q     <= '0;
      s2_verdict_q <= '0;
    end else begin
      if (s1_load) begin
        s1_frame_q <= in_frame_i;
        s1_crc_q   <= amf_crc_pkg::crc32c_frame(in_frame_i[223:0]);
      end
      if (s1_load) s1_valid_q <= 1'b1;
      else if (s2_load) s1_valid_q <= 1'b0;
      if (s2_load) begin
        s2_frame_q   <= s1_frame_q;
        s2_verdict_q <= verdict;
      end
      if (s2_load) s2_valid_q <= 1'b1;
      else if (out_ready_i) s2_valid_q <= 1'b0;
    end
  end

  assign out_valid_o   = s2_valid_q;
  assign out_frame_o   = s2_frame_q;
  assign out_verdict_o = s2_verdict_q;

`ifndef SYNTHESIS
  /* verilator lint_off SYNCASYNCNET */
  // A verdict is held until taken.
  VerdictHeld: assert property (@(posedge clk_i) disable iff (!rst_ni)
    out_valid_o && !out_ready_i |=> out_valid_o && $stable(out_frame_o) && $stable(out_verdict_o));
  /* verilator lint_on SYNCASYNCNET */
`endif

endmodule
