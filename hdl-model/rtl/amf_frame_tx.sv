// Link transmit stage: seals a frame with its CRC-32C (bytes 0..27) in the crc field and holds it
// on the link port until taken. One frame per cycle when the link takes one per cycle. The
// engine builds frames without a CRC.

module amf_frame_tx (
  input  logic         clk_i,
  input  logic         rst_ni,
  // frame from the engine (crc field ignored)
  input  logic         in_valid_i,
  output logic         in_ready_o,
  input  logic [255:0] in_frame_i,
  // link
  output logic         tx_valid_o,
  input  logic         tx_ready_i,
  output logic [255:0] tx_frame_o
);
  logic         valid_q;
  logic [255:0] frame_q;

  assign in_ready_o = !valid_q || tx_ready_i;

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      valid_q <= 1'b0;
      frame_q <= '0;
    end else begin
      if (in_valid_i && in_ready_o) begin
        valid_q <= 1'b1;
        frame_q <= {amf_crc_pkg::crc32c_frame(in_frame_i[223:0]) ^ 32'hffff_ffff, in_frame_i[223:0]};
      end else if (tx_ready_i) begin
        valid_q <= 1'b0;
      end
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
