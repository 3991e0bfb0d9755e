// Checks received link frames before the engine acts on them: CRC-32C of bytes 0..27 against the
// crc field, then kind, source and destination mask, then (link authentication on) the MAC of the
// seal, then the membership epoch, then (authentication on) the sender's counter against its
// replay window. The verdict order is the reference model's (`card::classify_wire`): a frame is
// counted under the first check it fails. Two pipeline stages (CRC and MAC, then classification)
// take one frame per cycle without authentication, so the acks of a broadcast to k sharers
// drain in k cycles, not 8k; with it, one frame per MAC (amf_siphash: 16 cycles, 32 with MacHalfRounds).

module amf_frame_check #(
  // The MAC a half SipRound per cycle (iCE40 timing) instead of a round (amf_siphash).
  parameter bit MacHalfRounds = 1'b0
) (
  input  logic         clk_i,
  input  logic         rst_ni,
  // frame in
  input  logic         in_valid_i,
  output logic         in_ready_o,
  input  logic [383:0] in_frame_i,  // link frame, then link_seal
  // this node
  input  logic [2:0]   node_id_i,
  input  logic [7:0]   peers_i,
  input  logic [31:0]  epoch_i,
  // link authentication (link_auth block); restart_i: the epoch changed, windows start over
  input  logic         auth_en_i,
  input  logic [127:0] key_i,
  input  logic         restart_i,
  // verdict out, held until taken
  output logic         out_valid_o,
  input  logic         out_ready_i,
  output logic [255:0] out_frame_o,
  output logic [2:0]   out_verdict_o,
  // a frame is inside (either stage): in_ready_o is no measure of it, being high in the cycle a
  // frame moves from stage 1 to stage 2
  output logic         busy_o
);
  // Verdicts (the reference model's order).
  localparam logic [2:0] VerdictOk        = 3'd0;
  localparam logic [2:0] VerdictBadCrc    = 3'd1;
  localparam logic [2:0] VerdictMalformed = 3'd2;
  localparam logic [2:0] VerdictStale     = 3'd3;
  localparam logic [2:0] VerdictForged    = 3'd4;
  localparam logic [2:0] VerdictReplayed  = 3'd5;
  // Counters remembered behind a sender's highest (model: link_auth::WINDOW_BITS).
  localparam int unsigned WindowBits = 32;
  localparam int unsigned Nodes = 8;

  // Stage 1: the frame, its computed CRC and (authenticated) its MAC. Stage 2: the frame and its
  // verdict.
  logic         s1_valid_q, s2_valid_q, s1_mac_q;
  logic [383:0] s1_frame_q;
  logic [255:0] s2_frame_q;
  logic [31:0]  s1_crc_q;
  logic [2:0]   s2_verdict_q;
  logic         s1_load, s2_load, mac_ready;

  logic        mac_done;
  logic [63:0] mac;
  amf_siphash #(.Words(5), .HalfRounds(MacHalfRounds)) u_mac (
    .clk_i,
    .rst_ni,
    .start_i (s1_load && auth_en_i),
    .key_i,
    .msg_i   (in_frame_i[319:0]),
    .done_o  (mac_done),
    .mac_o   (mac)
  );

  // The MAC's comparison is registered too (a 64-bit compare before the verdict's logic held the
  // checker under 60 MHz): the verdict waits one cycle past the MAC.
  logic mac_checked_q, mac_differs_q;
  assign mac_ready  = !s1_mac_q || mac_checked_q;
  assign s2_load    = s1_valid_q && mac_ready && (!s2_valid_q || out_ready_i);
  assign s1_load    = in_valid_i && in_ready_o;
  assign in_ready_o = !s1_valid_q || s2_load;

  // The checked fields of stage 1, by position (generated constants; yosys lacks struct casts).
  logic [7:0]  f_kind, f_src, f_dst;
  logic [31:0] f_epoch, f_crc;
  logic [63:0] f_counter, f_mac;
  assign f_kind  = s1_frame_q[amf_structs_pkg::LinkFrameKindLsb+:8];
  assign f_src   = s1_frame_q[amf_structs_pkg::LinkFrameSrcLsb+:8];
  assign f_dst   = s1_frame_q[amf_structs_pkg::LinkFrameDstLsb+:8];
  assign f_epoch = s1_frame_q[amf_structs_pkg::LinkFrameEpochLsb+:32];
  assign f_crc   = s1_frame_q[amf_structs_pkg::LinkFrameCrcLsb+:32];
  assign f_counter = s1_frame_q[256+amf_structs_pkg::LinkSealCounterLsb+:64];
  assign f_mac     = s1_frame_q[256+amf_structs_pkg::LinkSealMacLsb+:64];

  // Replay windows, one per sender: the highest counter accepted in this epoch and a bit per
  // counter behind it (bit d: highest - d). Counter 0 is never sent, so bit 0 starts set.
  //
  // The sender's window is looked up in two registered steps while the MAC runs (it takes 32
  // cycles, and windows change only when a frame leaves stage 1): the selection, then the
  // distances to its highest counter. Done in the verdict's cycle, the 8-way selection, a 64-bit
  // subtraction and the window's shift held the checker to 30 MHz on an iCE40.
  logic [63:0]           high_q [Nodes];
  logic [WindowBits-1:0] seen_q [Nodes];
  localparam int unsigned WindowLog2 = $clog2(WindowBits);
  logic [63:0]           w_high_q, ahead_q, behind_q;
  logic [WindowBits-1:0] w_seen_q;
  logic                  above_q, in_window, far_ahead;
  logic [1:0]            w_ready_q;  // the lookup's two steps done for the frame in stage 1
  logic                  counter_new;
  // Past the window: a wide OR of the high bits, not a comparison's carry chain.
  assign far_ahead   = |ahead_q[63:WindowLog2];
  assign in_window   = !above_q && !(|behind_q[63:WindowLog2]);
  assign counter_new = above_q || (in_window && !w_seen_q[behind_q[WindowLog2-1:0]]);

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      w_high_q    <= '0;
      w_seen_q    <= '0;
      behind_q    <= '0;
      ahead_q     <= '0;
      above_q     <= 1'b0;
      w_ready_q   <= '0;
      mac_checked_q <= 1'b0;
      mac_differs_q <= 1'b0;
    end else begin
      mac_checked_q <= !s1_load && mac_done;
      mac_differs_q <= mac != f_mac;
      w_high_q    <= high_q[f_src[2:0]];
      w_seen_q    <= seen_q[f_src[2:0]];
      behind_q    <= w_high_q - f_counter;
      ahead_q     <= f_counter - w_high_q;
      above_q     <= f_counter > w_high_q;
      w_ready_q   <= s1_load ? 2'b00 : {w_ready_q[0], 1'b1};
    end
  end

  logic [2:0] verdict;
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
    end else if (s1_mac_q && mac_differs_q) begin
      verdict = VerdictForged;
    end else if (f_epoch != epoch_i) begin
      verdict = VerdictStale;
    end else if (s1_mac_q && !counter_new) begin
      verdict = VerdictReplayed;
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
      s1_mac_q     <= 1'b0;
      s2_verdict_q <= '0;
    end else begin
      if (s1_load) begin
        s1_frame_q <= in_frame_i;
        s1_crc_q   <= amf_crc_pkg::crc32c_frame(in_frame_i[223:0]);
        s1_mac_q   <= auth_en_i;
      end
      if (s1_load) s1_valid_q <= 1'b1;
      else if (s2_load) s1_valid_q <= 1'b0;
      if (s2_load) begin
        s2_frame_q   <= s1_frame_q[255:0];
        s2_verdict_q <= verdict;
      end
      if (s2_load) s2_valid_q <= 1'b1;
      else if (out_ready_i) s2_valid_q <= 1'b0;
    end
  end

  // A frame accepted under authentication moves its sender's window; a new epoch clears them.
  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      for (int unsigned n = 0; n < Nodes; n++) begin
        high_q[n] <= '0;
        seen_q[n] <= WindowBits'(1);
      end
    end else if (restart_i) begin
      for (int unsigned n = 0; n < Nodes; n++) begin
        high_q[n] <= '0;
        seen_q[n] <= WindowBits'(1);
      end
    end else if (s2_load && s1_mac_q && verdict == VerdictOk) begin
      if (above_q) begin
        high_q[f_src[2:0]] <= f_counter;
        seen_q[f_src[2:0]] <= (far_ahead ? '0 : w_seen_q << ahead_q[WindowLog2-1:0])
                              | WindowBits'(1);
      end else begin
        seen_q[f_src[2:0]] <= w_seen_q | (WindowBits'(1) << behind_q[WindowLog2-1:0]);
      end
    end
  end

  assign out_valid_o   = s2_valid_q;
  assign out_frame_o   = s2_frame_q;
  assign out_verdict_o = s2_verdict_q;
  assign busy_o        = s1_valid_q || s2_valid_q;

`ifndef SYNTHESIS
  /* verilator lint_off SYNCASYNCNET */
  // A verdict is held until taken.
  VerdictHeld: assert property (@(posedge clk_i) disable iff (!rst_ni)
    out_valid_o && !out_ready_i |=> out_valid_o && $stable(out_frame_o) && $stable(out_verdict_o));
  // An authenticated frame's window lookup is done before its verdict (the MAC is slower).
  WindowReady: assert property (@(posedge clk_i) disable iff (!rst_ni)
    s2_load && s1_mac_q |-> w_ready_q[1]);
  /* verilator lint_on SYNCASYNCNET */
`endif

endmodule
