// DMA request arbiter: several engine clients (command fetch, completion writer, event writer)
// share the card's one DMA port. One request is outstanding at a time; grants rotate
// round-robin among the requesting clients so none starves, and the response goes back to the
// client that was granted. Per-client buses are flat vectors (client c at [c*W +: W]), the
// same bits as a packed [Clients-1:0][W-1:0] array, which yosys does not take on ports.

module amf_dma_arb #(
  parameter int unsigned Clients = 3
) (
  input  logic                      clk_i,
  input  logic                      rst_ni,
  // clients
  input  logic [Clients-1:0]        req_valid_i,
  output logic [Clients-1:0]        req_ready_o,
  input  logic [Clients-1:0]        req_write_i,
  input  logic [Clients*64-1:0]     req_addr_i,
  input  logic [Clients*6-1:0]      req_bytes_i,
  input  logic [Clients*256-1:0]    req_wdata_i,
  output logic [Clients-1:0]        rsp_valid_o,
  output logic                      rsp_error_o,
  output logic [255:0]              rsp_rdata_o,
  // the card's DMA port
  output logic                      dma_req_valid_o,
  input  logic                      dma_req_ready_i,
  output logic                      dma_req_write_o,
  output logic [63:0]               dma_req_addr_o,
  output logic [5:0]                dma_req_bytes_o,
  output logic [255:0]              dma_req_wdata_o,
  input  logic                      dma_rsp_valid_i,
  input  logic                      dma_rsp_error_i,
  input  logic [255:0]              dma_rsp_rdata_i
);
  localparam int unsigned IdxW = Clients > 1 ? $clog2(Clients) : 1;

  logic            busy_q;      // a request is granted and not yet answered
  logic [IdxW-1:0] owner_q;     // the granted client
  logic [IdxW-1:0] last_q;      // the client granted last (round-robin start)
  logic            pick_valid;
  logic [IdxW-1:0] pick;

  // Round-robin: the first requesting client after the last one granted.
  always_comb begin
    pick_valid = 1'b0;
    pick       = '0;
    for (int unsigned k = 1; k <= Clients; k++) begin
      logic [IdxW-1:0] c;
      c = IdxW'(({{(32 - IdxW){1'b0}}, last_q} + k) % Clients);
      if (!pick_valid && req_valid_i[c]) begin
        pick_valid = 1'b1;
        pick       = c;
      end
    end
  end

  logic [IdxW-1:0] sel;
  assign sel = busy_q ? owner_q : pick;

  // The port carries the selected client's request until the port takes it.
  logic issued_q;  // the owner's request was accepted by the port, waiting for the response
  assign dma_req_valid_o = busy_q && !issued_q;
  assign dma_req_write_o = req_write_i[owner_q];
  assign dma_req_addr_o  = req_addr_i[64*owner_q+:64];
  assign dma_req_bytes_o = req_bytes_i[6*owner_q+:6];
  assign dma_req_wdata_o = req_wdata_i[256*owner_q+:256];

  always_comb begin
    req_ready_o = '0;
    rsp_valid_o = '0;
    if (busy_q && !issued_q && dma_req_ready_i) req_ready_o[owner_q] = 1'b1;
    if (busy_q && issued_q && dma_rsp_valid_i) rsp_valid_o[owner_q] = 1'b1;
  end
  assign rsp_error_o = dma_rsp_error_i;
  assign rsp_rdata_o = dma_rsp_rdata_i;

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      busy_q   <= 1'b0;
      issued_q <= 1'b0;
      owner_q  <= '0;
      last_q   <= IdxW'(Clients - 1);
    end else begin
      if (!busy_q) begin
        if (pick_valid) begin
          busy_q  <= 1'b1;
          owner_q <= sel;
          last_q  <= sel;
        end
      end else if (!issued_q) begin
        if (dma_req_ready_i) issued_q <= 1'b1;
      end else if (dma_rsp_valid_i) begin
        busy_q   <= 1'b0;
        issued_q <= 1'b0;
      end
    end
  end

`ifndef SYNTHESIS
  /* verilator lint_off SYNCASYNCNET */
  OneResponseAtATime: assert property (@(posedge clk_i) disable iff (!rst_ni) $onehot0(rsp_valid_o));
  /* verilator lint_on SYNCASYNCNET */
`endif

endmodule
