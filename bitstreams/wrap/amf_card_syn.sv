// Synthesis wrapper for the whole card: its 256-bit DMA and 384-bit link ports exceed an HX8K's
// pins, so the wide inputs come from one 384-bit shift register fed by a pin, and the wide
// outputs are reduced to their parity (which keeps every bit's logic). Only for the resource and
// fmax report: the shift register adds 384 flip-flops to the count. A real card's wide ports end at
// its PCIe DMA engine and Ethernet MAC, on chip.
module amf_card_syn #(
  parameter int unsigned Inflight      = 2,
  parameter int unsigned TableSetsLog2 = 4,
  parameter int unsigned TableWays     = 2,
  parameter int unsigned Nodes         = 4,
  // The small configuration keeps 16 held requests (the full card has 32).
  parameter int unsigned OwedMax       = 16
) (
  input  logic        clk_i,
  input  logic        rst_ni,
  input  logic        wide_bit_i,
  // BAR0
  input  logic        reg_req_valid_i,
  input  logic        reg_req_write_i,
  input  logic [11:0] reg_req_addr_i,
  input  logic [31:0] reg_req_wdata_i,
  output logic        reg_rsp_valid_o,
  output logic [31:0] reg_rsp_rdata_o,
  // DMA and link handshakes
  output logic        dma_req_valid_o,
  input  logic        dma_req_ready_i,
  output logic        dma_req_write_o,
  output logic [5:0]  dma_req_bytes_o,
  input  logic        dma_rsp_valid_i,
  input  logic        dma_rsp_error_i,
  input  logic        link_rx_valid_i,
  output logic        link_rx_ready_o,
  output logic        link_tx_valid_o,
  input  logic        link_tx_ready_i,
  output logic [2:0]  wide_parity_o,
  output logic        irq_o,
  output logic        busy_o,
  output logic        active_o
);
  logic [383:0] wide_q;
  always_ff @(posedge clk_i) wide_q <= {wide_q[382:0], wide_bit_i};

  logic [63:0]  dma_req_addr;
  logic [255:0] dma_req_wdata;
  logic [383:0] link_tx_frame;

  amf_card #(.Inflight(Inflight), .TableSetsLog2(TableSetsLog2), .TableWays(TableWays), .Nodes(Nodes), .OwedMax(OwedMax),
             .MacHalfRounds(1'b1)) u_card (
    .clk_i,
    .rst_ni,
    .reg_req_valid_i,
    .reg_req_write_i,
    .reg_req_addr_i,
    .reg_req_wdata_i,
    .reg_rsp_valid_o,
    .reg_rsp_rdata_o,
    .dma_req_valid_o,
    .dma_req_ready_i,
    .dma_req_write_o,
    .dma_req_addr_o  (dma_req_addr),
    .dma_req_bytes_o,
    .dma_req_wdata_o (dma_req_wdata),
    .dma_rsp_valid_i,
    .dma_rsp_error_i,
    .dma_rsp_rdata_i (wide_q[255:0]),
    .link_rx_valid_i,
    .link_rx_ready_o,
    .link_rx_frame_i (wide_q),
    .link_tx_valid_o,
    .link_tx_ready_i,
    .link_tx_frame_o (link_tx_frame),
    .irq_o,
    .busy_o,
    .active_o
  );

  assign wide_parity_o = {^dma_req_addr, ^dma_req_wdata, ^link_tx_frame};
endmodule
