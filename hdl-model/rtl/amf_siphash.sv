// SipHash-2-4 of a fixed-length message (Words 64-bit little-endian words, no partial block):
// the MAC of authenticated link frames (link_auth block). One SipRound per cycle: two per
// message word and two for the length block, then four finalization rounds, 2 * (Words + 1) + 4
// cycles from start to done. The result holds until the next start. The round is 64-bit adds,
// rotates and xors, so a cycle costs one 64-bit carry chain and a few LUT levels.

module amf_siphash #(
  parameter int unsigned Words = 5
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
  localparam logic [63:0] LenBlock = 64'(Words * 8) << 56;

  typedef struct packed {
    logic [63:0] v0, v1, v2, v3;
  } state_t;

  function automatic state_t sipround(input state_t s);
    state_t r;
    r = s;
    r.v0 = r.v0 + r.v1; r.v1 = {r.v1[50:0], r.v1[63:51]}; r.v1 = r.v1 ^ r.v0; r.v0 = {r.v0[31:0], r.v0[63:32]};
    r.v2 = r.v2 + r.v3; r.v3 = {r.v3[47:0], r.v3[63:48]}; r.v3 = r.v3 ^ r.v2;
    r.v0 = r.v0 + r.v3; r.v3 = {r.v3[42:0], r.v3[63:43]}; r.v3 = r.v3 ^ r.v0;
    r.v2 = r.v2 + r.v1; r.v1 = {r.v1[46:0], r.v1[63:47]}; r.v1 = r.v1 ^ r.v2; r.v2 = {r.v2[31:0], r.v2[63:32]};
    return r;
  endfunction

  state_t              s_q, s_d;
  logic [Words*64-1:0] msg_q;
  logic [7:0]          round_q;  // rounds done; Rounds when idle after a result
  logic                busy_q, done_q;

  // The block the current round belongs to (the length block after the message words).
  logic [63:0] block;
  always_comb begin
    logic [7:0] b;
    b = round_q >> 1;
    block = LenBlock;
    for (int unsigned i = 0; i < Words; i++) begin
      if (b == 8'(i)) block = msg_q[64*i+:64];
    end
  end

  always_comb begin
    state_t x;
    x = s_q;
    if (round_q < 8'(2 * Blocks) && !round_q[0]) x.v3 = x.v3 ^ block;   // a block's first round
    if (round_q == 8'(2 * Blocks)) x.v2 = x.v2 ^ 64'hff;                // finalization starts
    s_d = sipround(x);
    if (round_q < 8'(2 * Blocks) && round_q[0]) s_d.v0 = s_d.v0 ^ block; // a block's last round
  end

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      s_q     <= '0;
      msg_q   <= '0;
      round_q <= '0;
      busy_q  <= 1'b0;
      done_q  <= 1'b0;
    end else if (start_i) begin
      s_q.v0  <= key_i[63:0] ^ 64'h736f6d6570736575;
      s_q.v1  <= key_i[127:64] ^ 64'h646f72616e646f6d;
      s_q.v2  <= key_i[63:0] ^ 64'h6c7967656e657261;
      s_q.v3  <= key_i[127:64] ^ 64'h7465646279746573;
      msg_q   <= msg_i;
      round_q <= '0;
      busy_q  <= 1'b1;
      done_q  <= 1'b0;
    end else if (busy_q) begin
      s_q     <= s_d;
      round_q <= round_q + 8'd1;
      if (round_q == 8'(Rounds - 1)) begin
        busy_q <= 1'b0;
        done_q <= 1'b1;
      end
    end
  end

  assign done_o = done_q;
  assign mac_o  = s_q.v0 ^ s_q.v1 ^ s_q.v2 ^ s_q.v3;

`ifndef SYNTHESIS
  /* verilator lint_off SYNCASYNCNET */
  // A start while busy would lose a MAC: the callers wait for done.
  NoStartWhileBusy: assert property (@(posedge clk_i) disable iff (!rst_ni) start_i |-> !busy_q);
  /* verilator lint_on SYNCASYNCNET */
`endif

endmodule
