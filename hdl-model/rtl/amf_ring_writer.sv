// Card-to-host ring writer (completions or events): writes 32-byte entries into host memory
// through the DMA port with the phase bit (bit 23) set for the current pass, and takes the host's
// consumer index from a posted doorbell. A full ring refuses entries (back-pressure); a bad size,
// a consumer doorbell past the producer, or a DMA error is reported and nothing is written. The
// reference model is `model::ring::RingWriter`.

module amf_ring_writer (
  input  logic         clk_i,
  input  logic         rst_ni,
  input  logic         clear_i,
  // configuration
  input  logic [63:0]  base_i,
  input  logic [31:0]  size_log2_i,
  // host consumer doorbell
  input  logic         host_cons_valid_i,
  input  logic [31:0]  host_cons_i,
  // entries
  input  logic         entry_valid_i,
  output logic         entry_ready_o,
  input  logic [255:0] entry_i,
  // DMA write port
  output logic         dma_req_valid_o,
  input  logic         dma_req_ready_i,
  output logic [63:0]  dma_req_addr_o,
  output logic [255:0] dma_req_data_o,
  input  logic         dma_rsp_valid_i,
  input  logic         dma_rsp_error_i,
  // status
  output logic         written_o,
  output logic         error_o,
  output logic [7:0]   error_code_o,
  output logic [31:0]  prod_o,
  output logic [31:0]  space_o,
  output logic         room_o,   // space_o != 0, from a flip-flop
  output logic [7:0]   space_sat_o,  // space_o saturated at 255, from flip-flops
  output logic         busy_o
);
  localparam int unsigned PhaseBit = 23;
  // device.status.error_code values (amf_regs_pkg; cast: Verilator 5.006 has an internal fault on
  // the enum constant alone in this module).
  localparam logic [7:0] ErrBadSize  = 8'(amf_regs_pkg::DeviceStatusErrorCodeBadRingSize);
  localparam logic [7:0] ErrOverrun  = 8'(amf_regs_pkg::DeviceStatusErrorCodeDoorbellOverrun);
  localparam logic [7:0] ErrDma      = 8'(amf_regs_pkg::DeviceStatusErrorCodeDmaError);

  typedef enum logic [1:0] {StIdle, StReq, StWait} state_e;

  state_e       state_q, state_d;
  logic [31:0]  prod_q, prod_d, cons_q, cons_d;
  // Free slots, kept in flip-flops computed from the next producer and consumer (so exact, not a
  // cycle late): the engine decides on them, and two subtractions in front of its state logic
  // cost an iCE40 its clock.
  logic [31:0]  space_q, space_d, used_d;
  logic [7:0]   space_sat_q;
  logic         room_q;
  logic [255:0] data_q;
  logic [63:0]  addr_q;

  logic         size_ok;
  logic [31:0]  size, used;
  logic         full;
  assign size_ok = size_log2_i >= 32'd4 && size_log2_i <= 32'd12;
  assign size    = 32'd1 << size_log2_i[3:0];
  assign used    = prod_q - cons_q;
  assign full    = used >= size;
  assign used_d  = prod_d - cons_d;
  assign space_d = size_ok && used_d < size ? size - used_d : 32'd0;

  logic         phase;
  logic [63:0]  slot_addr;
  assign phase     = ((prod_q >> size_log2_i[3:0]) & 32'd1) == 32'd0;
  assign slot_addr = base_i + {32'd0, (prod_q & (size - 32'd1)) << 5};

  logic accept;
  assign accept = state_q == StIdle && entry_valid_i && size_ok && !full && !clear_i;

  always_comb begin
    state_d      = state_q;
    prod_d       = prod_q;
    cons_d       = cons_q;
    written_o    = 1'b0;
    error_o      = 1'b0;
    error_code_o = 8'd0;
    unique case (state_q)
      StIdle: begin
        if (entry_valid_i && !size_ok) begin
          error_o      = 1'b1;
          error_code_o = ErrBadSize;
        end else if (accept) begin
          state_d = StReq;
        end
      end
      StReq:  if (dma_req_ready_i) state_d = StWait;
      StWait: begin
        if (dma_rsp_valid_i) begin
          state_d = StIdle;
          if (dma_rsp_error_i) begin
            error_o      = 1'b1;
            error_code_o = ErrDma;
          end else begin
            prod_d    = prod_q + 32'd1;
            written_o = 1'b1;
          end
        end
      end
      default: state_d = StIdle;
    endcase
    // The host may only move its consumer up to the producer, and not more than a ring behind.
    // An entry whose write the port has taken may already be visible to the host (and consumed)
    // before its response arrives, so it counts as produced here.
    if (host_cons_valid_i) begin
      if (prod_q + {31'd0, state_q == StWait} - host_cons_i > size) begin
        error_o      = 1'b1;
        error_code_o = ErrOverrun;
      end else begin
        cons_d = host_cons_i;
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
      data_q  <= '0;
      addr_q  <= '0;
      space_q <= '0;
      room_q  <= 1'b0;
      space_sat_q <= '0;
    end else begin
      state_q <= state_d;
      room_q      <= space_d != 32'd0;
      space_q     <= space_d;
      space_sat_q <= space_d[31:8] != '0 ? 8'hff : space_d[7:0];
      prod_q  <= prod_d;
      cons_q  <= cons_d;
      if (accept) begin
        data_q           <= entry_i;
        data_q[PhaseBit] <= phase;
        addr_q           <= slot_addr;
      end
    end
  end

  assign entry_ready_o   = accept;
  assign dma_req_valid_o = state_q == StReq;
  assign dma_req_addr_o  = addr_q;
  assign dma_req_data_o  = data_q;
  assign prod_o          = prod_q;
  assign busy_o          = state_q != StIdle;
  assign space_o         = space_q;
  assign room_o          = room_q;
  assign space_sat_o     = space_sat_q;

endmodule
