// Checks a received link frame before the engine acts on it: CRC-32C of bytes 0..27 against the
// crc field, then kind, source and destination, then the membership epoch. The verdict order is
// the reference model's (`Card::classify`): a frame is counted under the first check it fails.
// The CRC is computed 4 bytes per cycle (7 cycles), which keeps the XOR trees small.

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
  // verdict out (one cycle)
  output logic         out_valid_o,
  output logic [255:0] out_frame_o,
  output logic [1:0]   out_verdict_o
);
  // Verdicts (the reference model's order).
  localparam logic [1:0] VerdictOk       = 2'd0;
  localparam logic [1:0] VerdictBadCrc   = 2'd1;
  localparam logic [1:0] VerdictMalformed = 2'd2;
  localparam logic [1:0] VerdictStale    = 2'd3;
  localparam int unsigned CrcWords       = 7;              // 28 bytes, 4 per cycle

  typedef enum logic [1:0] {StIdle, StCrc, StDone} state_e;

  state_e       state_q, state_d;
  logic [255:0] frame_q;
  logic [223:0] data_q, data_d;  // bytes 0..27, shifted down 4 bytes per CRC cycle (no mux)
  logic [2:0]   word_q, word_d;
  logic [31:0]  crc_q, crc_d;
  logic [1:0]   verdict;

  // The checked fields, by position (generated constants; yosys lacks struct casts).
  logic [7:0]  f_kind, f_src, f_dst;
  logic [31:0] f_epoch, f_crc;
  assign f_kind  = frame_q[amf_structs_pkg::LinkFrameKindLsb+:8];
  assign f_src   = frame_q[amf_structs_pkg::LinkFrameSrcLsb+:8];
  assign f_dst   = frame_q[amf_structs_pkg::LinkFrameDstLsb+:8];
  assign f_epoch = frame_q[amf_structs_pkg::LinkFrameEpochLsb+:32];
  assign f_crc   = frame_q[amf_structs_pkg::LinkFrameCrcLsb+:32];

  always_comb begin
    state_d = state_q;
    word_d  = word_q;
    crc_d   = crc_q;
    data_d  = data_q;
    unique case (state_q)
      StIdle: begin
        if (in_valid_i) begin
          state_d = StCrc;
          word_d  = '0;
          crc_d   = '1;
          data_d  = in_frame_i[223:0];
        end
      end
      StCrc: begin
        crc_d  = amf_crc_pkg::crc32c_word(crc_q, data_q[31:0]);
        data_d = data_q >> 32;
        word_d = word_q + 1'b1;
        if (word_q == 3'(CrcWords - 1)) state_d = StDone;
      end
      StDone: state_d = StIdle;
      default: state_d = StIdle;
    endcase
  end

  // Classification of the latched frame once the CRC is complete.
  always_comb begin
    logic kind_ok;
    // Frame kinds are 1..=8 (amf_structs_pkg::frame_kind_e).
    kind_ok = f_kind >= 8'(amf_structs_pkg::FrameKindAcquireShared)
              && f_kind <= 8'(amf_structs_pkg::FrameKindHeartbeat);
    if ((crc_q ^ 32'hffff_ffff) != f_crc) begin
      verdict = VerdictBadCrc;
    end else if (!kind_ok || f_src[7:3] != '0 || f_src[2:0] == node_id_i || !peers_i[f_src[2:0]]
                 || f_dst != {5'd0, node_id_i}) begin
      verdict = VerdictMalformed;
    end else if (f_epoch != epoch_i) begin
      verdict = VerdictStale;
    end else begin
      verdict = VerdictOk;
    end
  end

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      state_q <= StIdle;
      frame_q <= '0;
      data_q  <= '0;
      word_q  <= '0;
      crc_q   <= '0;
    end else begin
      state_q <= state_d;
      word_q  <= word_d;
      crc_q   <= crc_d;
      data_q  <= data_d;
      if (state_q == StIdle && in_valid_i) frame_q <= in_frame_i;
    end
  end

  assign in_ready_o    = state_q == StIdle;
  assign out_valid_o   = state_q == StDone;
  assign out_frame_o   = frame_q;
  assign out_verdict_o = verdict;

`ifndef SYNTHESIS
  /* verilator lint_off SYNCASYNCNET */
  VerdictOneCycle: assert property (@(posedge clk_i) disable iff (!rst_ni)
    out_valid_o |=> !out_valid_o);
  /* verilator lint_on SYNCASYNCNET */
`endif

endmodule
