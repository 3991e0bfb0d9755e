// SipHash-2-4 of a fixed-length message (Words 64-bit little-endian words, no partial block):
// the MAC of authenticated link frames (link_auth block). Two SipRounds per message word and two
// for the length block, then four finalization rounds: 2 * (Words + 1) + 4 rounds, 16 for a
// frame. A round per cycle chains two levels of 64-bit adds: 16 cycles from start to done, as
// a card's FPGA with fast carry chains runs it (and the Verilator card, whose simulated cycles
// are the shared write's latency). With HalfRounds, each round runs as two half-rounds, one per
// cycle, so that a cycle holds one level of adds: a whole round per cycle ran at 31 MHz on an
// iCE40, half a round meets its 60 MHz target (the synthesis report's wrappers set it); 32
// cycles. The result holds until the next start.

module amf_siphash #(
  parameter int unsigned Words      = 5,
  parameter bit          HalfRounds = 1'b0
) (
  input  logic                  clk_i,
  input  logic                  rst_ni,
  input  logic                  start_i,
  input  logic [127:0]          key_i,  // k0 = key_i[63:0], k1 = key_i[127:64]
  input  logic [Words*64-1:0]   msg_i,  // word i at [64i +: 64]; sampled at start
  output logic                  done_o, // result valid (set when the last round ends)
  output logic [63:0]           mac_o
);
  localparam int unsigned Blocks = Words + 1;          // the length block ends the message
  localparam int unsigned Rounds = 2 * Blocks + 4;
  localparam int unsigned Steps  = HalfRounds ? 2 * Rounds : Rounds;
  localparam logic [63:0] LenBlock = 64'(Words * 8) << 56;

  // The state as four 64-bit words (no packed struct: yosys 0.23 cannot select its members).
  logic [63:0] v0_q, v1_q, v2_q, v3_q;
  logic [63:0] v0_d, v1_d, v2_d, v3_d;
  // The blocks still to mix, the current one lowest (the length block last): a shift register,
  // so that no step selects among them.
  logic [Blocks*64-1:0] msg_q;
  logic [7:0]           step_q;  // steps (rounds, or half-rounds) done
  logic                 busy_q, done_q;

  // What the next step does, registered so that the round's logic starts from flops: mix the
  // block in (a block's first half-round), mix it out (its last), 0xff into v2 (finalization
  // starts), or the second half of a round.
  // (Bits, not a packed struct: yosys 0.23 cannot select struct members.)
  localparam int unsigned MixIn = 0, MixOut = 1, Finalize = 2, SecondHalf = 3;
  logic [3:0] flags_q;

  // Steps per block: two rounds.
  localparam int unsigned BlockSteps = HalfRounds ? 4 : 2;

  function automatic logic [3:0] step_of(input logic [7:0] s);
    logic [3:0] f;
    logic [7:0] in_block;
    in_block        = s % 8'(BlockSteps);
    f[MixIn]      = in_block == 8'd0 && s < 8'(BlockSteps * Blocks);
    f[MixOut]     = in_block == 8'(BlockSteps - 1) && s < 8'(BlockSteps * Blocks);
    f[Finalize]   = s == 8'(BlockSteps * Blocks);
    f[SecondHalf] = HalfRounds && s[0];
    step_of = f;
  endfunction

  logic [63:0] block;
  assign block = msg_q[63:0];

  // The two halves of a SipRound, one level of 64-bit adds each (two in parallel), on the
  // state packed as {v3, v2, v1, v0}. The block goes in before the first half of a block's
  // first round and out after the second half of its last.
  function automatic logic [255:0] first_half(input logic [255:0] v, input logic [63:0] blk,
                                              input logic mix_in, input logic finalize);
    logic [63:0] a, b, c, d;
    {d, c, b, a} = v;
    if (mix_in) d = d ^ blk;
    if (finalize) c = c ^ 64'hff;
    a = a + b; b = {b[50:0], b[63:51]}; b = b ^ a; a = {a[31:0], a[63:32]};
    c = c + d; d = {d[47:0], d[63:48]}; d = d ^ c;
    first_half = {d, c, b, a};
  endfunction

  function automatic logic [255:0] second_half(input logic [255:0] v, input logic [63:0] blk,
                                               input logic mix_out);
    logic [63:0] a, b, c, d;
    {d, c, b, a} = v;
    a = a + d; d = {d[42:0], d[63:43]}; d = d ^ a;
    c = c + b; b = {b[46:0], b[63:47]}; b = b ^ c; c = {c[31:0], c[63:32]};
    if (mix_out) a = a ^ blk;
    second_half = {d, c, b, a};
  endfunction

  // With HalfRounds a step is one half, chosen by a mux after both (each half's adds start
  // from the flops); else a step chains both.
  logic [255:0] v_q, v_d;
  assign v_q = {v3_q, v2_q, v1_q, v0_q};
  assign {v3_d, v2_d, v1_d, v0_d} = v_d;
  if (HalfRounds) begin : gen_half_rounds
    assign v_d = flags_q[SecondHalf] ? second_half(v_q, block, flags_q[MixOut])
                                     : first_half(v_q, block, flags_q[MixIn], flags_q[Finalize]);
  end else begin : gen_full_rounds
    assign v_d = second_half(first_half(v_q, block, flags_q[MixIn], flags_q[Finalize]), block,
                             flags_q[MixOut]);
  end

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      v0_q         <= '0;
      v1_q         <= '0;
      v2_q         <= '0;
      v3_q         <= '0;
      msg_q        <= '0;
      step_q       <= '0;
      flags_q      <= '0;
      busy_q       <= 1'b0;
      done_q       <= 1'b0;
    end else if (start_i) begin
      v0_q         <= key_i[63:0] ^ 64'h736f6d6570736575;
      v1_q         <= key_i[127:64] ^ 64'h646f72616e646f6d;
      v2_q         <= key_i[63:0] ^ 64'h6c7967656e657261;
      v3_q         <= key_i[127:64] ^ 64'h7465646279746573;
      msg_q        <= {LenBlock, msg_i};
      step_q       <= '0;
      flags_q      <= step_of(8'd0);
      busy_q       <= 1'b1;
      done_q       <= 1'b0;
    end else if (busy_q) begin
      v0_q         <= v0_d;
      v1_q         <= v1_d;
      v2_q         <= v2_d;
      v3_q         <= v3_d;
      if (flags_q[MixOut]) msg_q <= msg_q >> 64;
      step_q       <= step_q + 8'd1;
      flags_q      <= step_of(step_q + 8'd1);
      if (step_q == 8'(Steps - 1)) begin
        busy_q <= 1'b0;
        done_q <= 1'b1;
      end
    end
  end

  assign done_o = done_q;
  assign mac_o  = v0_q ^ v1_q ^ v2_q ^ v3_q;

`ifndef SYNTHESIS
  /* verilator lint_off SYNCASYNCNET */
  // A start while busy would lose a MAC: the callers wait for done.
  NoStartWhileBusy: assert property (@(posedge clk_i) disable iff (!rst_ni) start_i |-> !busy_q);
  /* verilator lint_on SYNCASYNCNET */
`endif

endmodule
