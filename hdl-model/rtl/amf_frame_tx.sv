// Link transmit stage: seals a frame with its CRC-32C (bytes 0..27) in the crc field and, with
// link authentication on, appends the seal (link_seal: this card's counter of the epoch and the
// SipHash-2-4 MAC of bytes 0..39 under the cluster key), then holds the 48-byte wire frame on
// the link port until taken. Without authentication the seal is zero and the stage takes one
// frame per cycle; with it, one per MAC (amf_siphash: 16 cycles, 32 with MacHalfRounds). The engine builds frames
// without a CRC.

module amf_frame_tx #(
  // The MAC a half SipRound per cycle (iCE40 timing) instead of a round (amf_siphash).
  parameter bit MacHalfRounds = 1'b0
) (
  input  logic         clk_i,
  input  logic         rst_ni,
  // link authentication (link_auth block); restart_i: the epoch changed, counters start over
  input  logic         auth_en_i,
  input  logic [127:0] key_i,
  input  logic         restart_i,
  // frame from the engine (crc field ignored)
  input  logic         in_valid_i,
  output logic         in_ready_o,
  input  logic [255:0] in_frame_i,
  // link
  output logic         tx_valid_o,
  input  logic         tx_ready_i,
  output logic [383:0] tx_frame_o
);
  logic         valid_q, sealing_q;
  logic [383:0] frame_q;
  logic [63:0]  counter_q;

  logic [255:0] with_crc;
  logic [63:0]  counter_next;
  assign with_crc     = {amf_crc_pkg::crc32c_frame(in_frame_i[223:0]) ^ 32'hffff_ffff, in_frame_i[223:0]};
  assign counter_next = counter_q + 64'd1;

  logic take;
  assign in_ready_o = !sealing_q && (!valid_q || tx_ready_i);
  assign take       = in_valid_i && in_ready_o;

  logic        mac_done;
  logic [63:0] mac;
  amf_siphash #(.Words(5), .HalfRounds(MacHalfRounds)) u_mac (
    .clk_i,
    .rst_ni,
    .start_i (take && auth_en_i),
    .key_i,
    .msg_i   ({counter_next, with_crc}),
    .done_o  (mac_done),
    .mac_o   (mac)
  );

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      valid_q   <= 1'b0;
      sealing_q <= 1'b0;
      frame_q   <= '0;
      counter_q <= '0;
    end else begin
      if (take) begin
        if (auth_en_i) begin
          frame_q   <= {64'd0, counter_next, with_crc};
          counter_q <= counter_next;
          sealing_q <= 1'b1;
          valid_q   <= 1'b0;
        end else begin
          frame_q <= {128'd0, with_crc};
          valid_q <= 1'b1;
        end
      end else begin
        if (tx_ready_i) valid_q <= 1'b0;
        if (sealing_q && mac_done) begin
          frame_q[383:320] <= mac;
          sealing_q        <= 1'b0;
          valid_q          <= 1'b1;
        end
      end
      // After the counter update: a new epoch's first frame carries counter 1.
      if (restart_i) counter_q <= '0;
    end
  end

  assign tx_valid_o = valid_q;
  assign tx_frame_o = frame_q;

  // The crc field of the input is replaced, never read.
  logic [31:0] unused_crc_in;
  assign unused_crc_in = in_frame_i[255:224];

`ifndef SYNTHESIS
  /* verilator lint_off SYNCASYNCNET */
  // A frame is held on the link until taken.
  FrameHeld: assert property (@(posedge clk_i) disable iff (!rst_ni)
    tx_valid_o && !tx_ready_i |=> tx_valid_o && $stable(tx_frame_o));
  /* verilator lint_on SYNCASYNCNET */
`endif

endmodule
