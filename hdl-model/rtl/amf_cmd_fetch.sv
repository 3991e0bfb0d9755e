// Host-to-card command fetcher: takes the host's producer index from a posted doorbell (checked:
// a bad ring size or a producer more than a ring ahead is an error), reads 32-byte descriptors
// in order through the DMA port when the engine has room (out_ready_i), writes the consumer
// index back to host memory when an address is configured, and hands each descriptor on. The
// reference model is `model::ring::RingReader`.

module amf_cmd_fetch (
  input  logic         clk_i,
  input  logic         rst_ni,
  input  logic         clear_i,
  input  logic         enable_i,
  // configuration
  input  logic [63:0]  base_i,
  input  logic [31:0]  size_log2_i,
  input  logic [63:0]  cons_addr_i,
  // host producer doorbell
  input  logic         doorbell_i,
  input  logic [31:0]  doorbell_value_i,
  // descriptors out
  output logic         out_valid_o,
  input  logic         out_ready_i,
  output logic [255:0] out_cmd_o,
  // DMA port (one request at a time)
  output logic         dma_req_valid_o,
  input  logic         dma_req_ready_i,
  output logic         dma_req_write_o,
  output logic [63:0]  dma_req_addr_o,
  output logic [5:0]   dma_req_bytes_o,
  output logic [31:0]  dma_req_wdata_o,
  input  logic         dma_rsp_valid_i,
  input  logic         dma_rsp_error_i,
  input  logic [255:0] dma_rsp_rdata_i,
  // status
  output logic         error_o,
  output logic [7:0]   error_code_o,
  output logic [31:0]  cons_o,
  output logic         busy_o
);
  // device.status.error_code values (amf_regs_pkg; cast: Verilator 5.006 has an internal fault on
  // the enum constant alone in this module).
  localparam logic [7:0] ErrBadSize  = 8'(amf_regs_pkg::DeviceStatusErrorCodeBadRingSize);
  localparam logic [7:0] ErrOverrun  = 8'(amf_regs_pkg::DeviceStatusErrorCodeDoorbellOverrun);
  localparam logic [7:0] ErrDma      = 8'(amf_regs_pkg::DeviceStatusErrorCodeDmaError);

  typedef enum logic [2:0] {StIdle, StReadReq, StReadWait, StConsReq, StConsWait, StOut} state_e;

  state_e       state_q, state_d;
  logic [31:0]  prod_q, prod_d, cons_q, cons_d;
  logic [255:0] cmd_q;

  logic         size_ok;
  logic [31:0]  size;
  assign size_ok = size_log2_i >= 32'd4 && size_log2_i <= 32'd12;
  assign size    = 32'd1 << size_log2_i[3:0];

  always_comb begin
    state_d      = state_q;
    prod_d       = prod_q;
    cons_d       = cons_q;
    error_o      = 1'b0;
    error_code_o = 8'd0;
    unique case (state_q)
      StIdle: begin
        if (enable_i && prod_q != cons_q && out_ready_i) begin
          if (!size_ok) begin
            error_o      = 1'b1;
            error_code_o = ErrBadSize;
          end else begin
            state_d = StReadReq;
          end
        end
      end
      StReadReq: if (dma_req_ready_i) state_d = StReadWait;
      StReadWait: begin
        if (dma_rsp_valid_i) begin
          if (dma_rsp_error_i) begin
            error_o      = 1'b1;
            error_code_o = ErrDma;
            state_d      = StIdle;
          end else begin
            cons_d  = cons_q + 32'd1;
            state_d = cons_addr_i != '0 ? StConsReq : StOut;
          end
        end
      end
      StConsReq: if (dma_req_ready_i) state_d = StConsWait;
      StConsWait: begin
        if (dma_rsp_valid_i) begin
          if (dma_rsp_error_i) begin
            error_o      = 1'b1;
            error_code_o = ErrDma;
            state_d      = StIdle;
          end else begin
            state_d = StOut;
          end
        end
      end
      StOut: if (out_ready_i) state_d = StIdle;
      default: state_d = StIdle;
    endcase
    if (doorbell_i) begin
      if (!size_ok) begin
        error_o      = 1'b1;
        error_code_o = ErrBadSize;
      end else if (doorbell_value_i - cons_q > size) begin
        error_o      = 1'b1;
        error_code_o = ErrOverrun;
      end else begin
        prod_d = doorbell_value_i;
      end
    end
    if (clear_i) begin
      state_d = StIdle;
      prod_d  = '0;
      cons_d  = '0;
    end
  end

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      state_q <= StIdle;
      prod_q  <= '0;
      cons_q  <= '0;
      cmd_q   <= '0;
    end else begin
      state_q <= state_d;
      prod_q  <= prod_d;
      cons_q  <= cons_d;
      if (state_q == StReadWait && dma_rsp_valid_i) cmd_q <= dma_rsp_rdata_i;
    end
  end

  logic reading;
  assign reading         = state_q == StReadReq;
  assign dma_req_valid_o = reading || state_q == StConsReq;
  assign dma_req_write_o = !reading;
  assign dma_req_addr_o  = reading ? base_i + {32'd0, (cons_q & (size - 32'd1)) << 5} : cons_addr_i;
  assign dma_req_bytes_o = reading ? 6'd32 : 6'd4;
  assign dma_req_wdata_o = cons_q;
  assign out_valid_o     = state_q == StOut;
  assign out_cmd_o       = cmd_q;
  assign cons_o          = cons_q;
  assign busy_o          = state_q != StIdle || (enable_i && prod_q != cons_q);

endmodule
