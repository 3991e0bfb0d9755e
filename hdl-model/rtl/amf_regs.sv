// BAR0 register file: the block chain of hdl-model/spec/registers.toml (TYPE/VERSION/NEXT
// headers from the generated package), the engine's configuration registers, posted doorbells
// (one-cycle pulses with the written value), w1c interrupt causes, and read-only views of engine
// state and counters. Reads answer one cycle after the request; unmapped offsets inside the BAR
// read 0, outside it or unaligned all-ones (as a PCIe read of nothing), like the reference model.
// Package names are spelled out (amf_regs_pkg::) because yosys 0.23 lacks imports in modules.

module amf_regs #(
  parameter int unsigned TableSetsLog2 = 6,
  parameter int unsigned TableWays     = 4,
  parameter int unsigned PresenceLog2  = 14
) (
  input  logic         clk_i,
  input  logic         rst_ni,
  // BAR0 port
  input  logic         req_valid_i,
  input  logic         req_write_i,
  input  logic [11:0]  req_addr_i,
  input  logic [31:0]  req_wdata_i,
  output logic         rsp_valid_o,
  output logic [31:0]  rsp_rdata_o,
  // configuration to the engine
  output logic         ctrl_enable_o,
  output logic         soft_reset_o,
  output logic [2:0]   node_id_o,
  output logic [7:0]   peers_o,
  output logic [31:0]  epoch_o,
  output logic [31:0]  ack_timeout_o,
  output logic [31:0]  heartbeat_period_o,
  output logic [63:0]  cmd_base_o,
  output logic [31:0]  cmd_size_log2_o,
  output logic [63:0]  cmd_cons_addr_o,
  output logic [63:0]  cpl_base_o,
  output logic [31:0]  cpl_size_log2_o,
  output logic [63:0]  evt_base_o,
  output logic [31:0]  evt_size_log2_o,
  // doorbells: a pulse per ring, the value in doorbell_value_o
  output logic         cmd_doorbell_o,
  output logic         cpl_doorbell_o,
  output logic         evt_doorbell_o,
  output logic [31:0]  doorbell_value_o,
  // link authentication
  output logic         auth_enable_o,
  output logic [127:0] auth_key_o,
  output logic         irq_o,
  // engine state
  input  logic         ready_i,
  input  logic [7:0]   error_code_i,
  input  logic [2:0]   irq_set_i,
  input  logic [31:0]  occupancy_i,
  input  logic [31:0]  full_fallbacks_i,
  input  logic         filter_on_i,
  input  logic [31:0]  filtered_i,
  input  logic [351:0] stats_i  // 11 counters, frames_tx at [31:0], in register order
);
  localparam int unsigned NumStats = 11;

  logic [2:0]  blk;
  logic [7:0]  off;
  logic        in_bar;
  assign blk    = req_addr_i[10:8];
  assign off    = req_addr_i[7:0];
  assign in_bar = req_addr_i < 12'(amf_regs_pkg::BarBytes) && req_addr_i[1:0] == 2'b00;

  logic        enable_q;
  logic [31:0] node_q, epoch_q, ack_timeout_q, heartbeat_q, irq_q, irq_enable_q, scratch_q;
  logic [63:0] cmd_base_q, cmd_cons_addr_q, cpl_base_q, evt_base_q;
  logic [31:0] cmd_size_q, cpl_size_q, evt_size_q;
  logic        auth_enable_q;
  logic [127:0] auth_key_q;
  logic        rsp_valid_q;
  logic [31:0] rdata_q, rdata_d;

  function automatic logic [31:0] block_word(input logic [31:0] type_id, input logic [31:0] version,
                                             input logic [31:0] next, input logic [7:0] o);
    unique case (o)
      amf_regs_pkg::HeaderTypeOffset:    block_word = type_id;
      amf_regs_pkg::HeaderVersionOffset: block_word = version;
      amf_regs_pkg::HeaderNextOffset:    block_word = next;
      default:             block_word = '0;
    endcase
  endfunction

  logic wr;
  assign wr = req_valid_i && req_write_i && in_bar;

  // Read mux.
  always_comb begin
    rdata_d = '0;
    if (!in_bar) begin
      rdata_d = '1;
    end else if (off < 8'h0c) begin
      unique case (blk)
        3'(amf_regs_pkg::DeviceBase >> 8):      rdata_d = block_word(amf_regs_pkg::DeviceType, amf_regs_pkg::DeviceVersion, amf_regs_pkg::DeviceNext, off);
        3'(amf_regs_pkg::CmdRingBase >> 8):     rdata_d = block_word(amf_regs_pkg::CmdRingType, amf_regs_pkg::CmdRingVersion, amf_regs_pkg::CmdRingNext, off);
        3'(amf_regs_pkg::CplRingBase >> 8):     rdata_d = block_word(amf_regs_pkg::CplRingType, amf_regs_pkg::CplRingVersion, amf_regs_pkg::CplRingNext, off);
        3'(amf_regs_pkg::EvtRingBase >> 8):     rdata_d = block_word(amf_regs_pkg::EvtRingType, amf_regs_pkg::EvtRingVersion, amf_regs_pkg::EvtRingNext, off);
        3'(amf_regs_pkg::SharerTableBase >> 8): rdata_d = block_word(amf_regs_pkg::SharerTableType, amf_regs_pkg::SharerTableVersion, amf_regs_pkg::SharerTableNext, off);
        3'(amf_regs_pkg::StatsBase >> 8):       rdata_d = block_word(amf_regs_pkg::StatsType, amf_regs_pkg::StatsVersion, amf_regs_pkg::StatsNext, off);
        3'(amf_regs_pkg::LinkAuthBase >> 8):    rdata_d = block_word(amf_regs_pkg::LinkAuthType, amf_regs_pkg::LinkAuthVersion, amf_regs_pkg::LinkAuthNext, off);
        default:                  rdata_d = '0;
      endcase
    end else begin
      unique case (blk)
        3'(amf_regs_pkg::DeviceBase >> 8): begin
          unique case (off)
            amf_regs_pkg::DeviceCtrlOffset:            rdata_d = {31'd0, enable_q};
            amf_regs_pkg::DeviceStatusOffset:          rdata_d = {16'd0, error_code_i, 6'd0, error_code_i != 8'd0, ready_i};
            amf_regs_pkg::DeviceNodeOffset:            rdata_d = node_q;
            amf_regs_pkg::DeviceEpochOffset:           rdata_d = epoch_q;
            amf_regs_pkg::DeviceAckTimeoutOffset:      rdata_d = ack_timeout_q;
            amf_regs_pkg::DeviceHeartbeatPeriodOffset: rdata_d = heartbeat_q;
            amf_regs_pkg::DeviceIrqOffset:             rdata_d = irq_q;
            amf_regs_pkg::DeviceIrqEnableOffset:       rdata_d = irq_enable_q;
            amf_regs_pkg::DeviceScratchOffset:         rdata_d = scratch_q;
            default:                     rdata_d = '0;
          endcase
        end
        3'(amf_regs_pkg::CmdRingBase >> 8): begin
          unique case (off)
            amf_regs_pkg::CmdRingBaseLoOffset:     rdata_d = cmd_base_q[31:0];
            amf_regs_pkg::CmdRingBaseHiOffset:     rdata_d = cmd_base_q[63:32];
            amf_regs_pkg::CmdRingSizeLog2Offset:   rdata_d = cmd_size_q;
            amf_regs_pkg::CmdRingConsAddrLoOffset: rdata_d = cmd_cons_addr_q[31:0];
            amf_regs_pkg::CmdRingConsAddrHiOffset: rdata_d = cmd_cons_addr_q[63:32];
            default:                 rdata_d = '0;
          endcase
        end
        3'(amf_regs_pkg::CplRingBase >> 8): begin
          unique case (off)
            amf_regs_pkg::CplRingBaseLoOffset:   rdata_d = cpl_base_q[31:0];
            amf_regs_pkg::CplRingBaseHiOffset:   rdata_d = cpl_base_q[63:32];
            amf_regs_pkg::CplRingSizeLog2Offset: rdata_d = cpl_size_q;
            default:               rdata_d = '0;
          endcase
        end
        3'(amf_regs_pkg::EvtRingBase >> 8): begin
          unique case (off)
            amf_regs_pkg::EvtRingBaseLoOffset:   rdata_d = evt_base_q[31:0];
            amf_regs_pkg::EvtRingBaseHiOffset:   rdata_d = evt_base_q[63:32];
            amf_regs_pkg::EvtRingSizeLog2Offset: rdata_d = evt_size_q;
            default:               rdata_d = '0;
          endcase
        end
        3'(amf_regs_pkg::SharerTableBase >> 8): begin
          unique case (off)
            amf_regs_pkg::SharerTableGeometryOffset:      rdata_d = {16'd0, 8'(TableWays), 8'(TableSetsLog2)};
            amf_regs_pkg::SharerTableOccupancyOffset:     rdata_d = occupancy_i;
            amf_regs_pkg::SharerTableFullFallbacksOffset: rdata_d = full_fallbacks_i;
            amf_regs_pkg::SharerTablePresenceOffset:      rdata_d = {23'd0, filter_on_i, 8'(PresenceLog2)};
            amf_regs_pkg::SharerTableFilteredOffset:      rdata_d = filtered_i;
            default:                        rdata_d = '0;
          endcase
        end
        3'(amf_regs_pkg::StatsBase >> 8): begin
          if (off >= amf_regs_pkg::StatsFramesTxOffset && off <= amf_regs_pkg::StatsReplayedOffset) begin
            rdata_d = stats_i[32*((off - amf_regs_pkg::StatsFramesTxOffset) >> 2)+:32];
          end
        end
        // The key is write-only: it reads as 0.
        3'(amf_regs_pkg::LinkAuthBase >> 8): begin
          if (off == amf_regs_pkg::LinkAuthCtrlOffset) rdata_d = {31'd0, auth_enable_q};
        end
        default: rdata_d = '0;
      endcase
    end
  end

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      enable_q        <= 1'b0;
      node_q          <= amf_regs_pkg::DeviceNodeReset;
      epoch_q         <= amf_regs_pkg::DeviceEpochReset;
      ack_timeout_q   <= amf_regs_pkg::DeviceAckTimeoutReset;
      heartbeat_q     <= amf_regs_pkg::DeviceHeartbeatPeriodReset;
      irq_q           <= '0;
      irq_enable_q    <= '0;
      scratch_q       <= '0;
      cmd_base_q      <= '0;
      cmd_cons_addr_q <= '0;
      cpl_base_q      <= '0;
      evt_base_q      <= '0;
      cmd_size_q      <= amf_regs_pkg::CmdRingSizeLog2Reset;
      cpl_size_q      <= amf_regs_pkg::CplRingSizeLog2Reset;
      evt_size_q      <= amf_regs_pkg::EvtRingSizeLog2Reset;
      auth_enable_q   <= 1'b0;
      auth_key_q      <= '0;
      rsp_valid_q     <= 1'b0;
      rdata_q         <= '0;
    end else begin
      rsp_valid_q <= req_valid_i && !req_write_i;
      if (req_valid_i && !req_write_i) rdata_q <= rdata_d;
      // w1c first, then new causes: a cause raised in the same cycle survives the clear.
      irq_q <= (irq_q & ~((wr && blk == 3'(amf_regs_pkg::DeviceBase >> 8) && off == amf_regs_pkg::DeviceIrqOffset) ? req_wdata_i : 32'd0))
               | {29'd0, irq_set_i};
      if (wr) begin
        unique case (blk)
          3'(amf_regs_pkg::DeviceBase >> 8): begin
            unique case (off)
              amf_regs_pkg::DeviceCtrlOffset:            enable_q <= req_wdata_i[amf_regs_pkg::DeviceCtrlEnableLsb];
              amf_regs_pkg::DeviceNodeOffset:            node_q <= req_wdata_i & 32'h0000_ff07;
              amf_regs_pkg::DeviceEpochOffset:           epoch_q <= req_wdata_i;
              amf_regs_pkg::DeviceAckTimeoutOffset:      ack_timeout_q <= req_wdata_i;
              amf_regs_pkg::DeviceHeartbeatPeriodOffset: heartbeat_q <= req_wdata_i;
              amf_regs_pkg::DeviceIrqEnableOffset:       irq_enable_q <= req_wdata_i & 32'd7;
              amf_regs_pkg::DeviceScratchOffset:         scratch_q <= req_wdata_i;
              default: ;
            endcase
          end
          3'(amf_regs_pkg::CmdRingBase >> 8): begin
            unique case (off)
              amf_regs_pkg::CmdRingBaseLoOffset:     cmd_base_q[31:0] <= req_wdata_i;
              amf_regs_pkg::CmdRingBaseHiOffset:     cmd_base_q[63:32] <= req_wdata_i;
              amf_regs_pkg::CmdRingSizeLog2Offset:   cmd_size_q <= req_wdata_i;
              amf_regs_pkg::CmdRingConsAddrLoOffset: cmd_cons_addr_q[31:0] <= req_wdata_i;
              amf_regs_pkg::CmdRingConsAddrHiOffset: cmd_cons_addr_q[63:32] <= req_wdata_i;
              default: ;
            endcase
          end
          3'(amf_regs_pkg::CplRingBase >> 8): begin
            unique case (off)
              amf_regs_pkg::CplRingBaseLoOffset:   cpl_base_q[31:0] <= req_wdata_i;
              amf_regs_pkg::CplRingBaseHiOffset:   cpl_base_q[63:32] <= req_wdata_i;
              amf_regs_pkg::CplRingSizeLog2Offset: cpl_size_q <= req_wdata_i;
              default: ;
            endcase
          end
          3'(amf_regs_pkg::EvtRingBase >> 8): begin
            unique case (off)
              amf_regs_pkg::EvtRingBaseLoOffset:   evt_base_q[31:0] <= req_wdata_i;
              amf_regs_pkg::EvtRingBaseHiOffset:   evt_base_q[63:32] <= req_wdata_i;
              amf_regs_pkg::EvtRingSizeLog2Offset: evt_size_q <= req_wdata_i;
              default: ;
            endcase
          end
          3'(amf_regs_pkg::LinkAuthBase >> 8): begin
            unique case (off)
              amf_regs_pkg::LinkAuthCtrlOffset: auth_enable_q <= req_wdata_i[amf_regs_pkg::LinkAuthCtrlEnableLsb];
              amf_regs_pkg::LinkAuthKey0Offset: auth_key_q[31:0] <= req_wdata_i;
              amf_regs_pkg::LinkAuthKey1Offset: auth_key_q[63:32] <= req_wdata_i;
              amf_regs_pkg::LinkAuthKey2Offset: auth_key_q[95:64] <= req_wdata_i;
              amf_regs_pkg::LinkAuthKey3Offset: auth_key_q[127:96] <= req_wdata_i;
              default: ;
            endcase
          end
          default: ;
        endcase
      end
    end
  end

  logic dev_wr;
  assign dev_wr = wr && blk == 3'(amf_regs_pkg::DeviceBase >> 8);

  assign rsp_valid_o        = rsp_valid_q;
  assign rsp_rdata_o        = rdata_q;
  assign ctrl_enable_o      = enable_q;
  assign soft_reset_o       = dev_wr && off == amf_regs_pkg::DeviceCtrlOffset && req_wdata_i[amf_regs_pkg::DeviceCtrlSoftResetLsb];
  assign node_id_o          = node_q[2:0];
  assign peers_o            = node_q[15:8];
  assign epoch_o            = epoch_q;
  assign ack_timeout_o      = ack_timeout_q;
  assign heartbeat_period_o = heartbeat_q;
  assign cmd_base_o         = cmd_base_q;
  assign cmd_size_log2_o    = cmd_size_q;
  assign cmd_cons_addr_o    = cmd_cons_addr_q;
  assign cpl_base_o         = cpl_base_q;
  assign cpl_size_log2_o    = cpl_size_q;
  assign evt_base_o         = evt_base_q;
  assign evt_size_log2_o    = evt_size_q;
  assign cmd_doorbell_o     = wr && blk == 3'(amf_regs_pkg::CmdRingBase >> 8) && off == amf_regs_pkg::CmdRingDoorbellOffset;
  assign cpl_doorbell_o     = wr && blk == 3'(amf_regs_pkg::CplRingBase >> 8) && off == amf_regs_pkg::CplRingDoorbellOffset;
  assign evt_doorbell_o     = wr && blk == 3'(amf_regs_pkg::EvtRingBase >> 8) && off == amf_regs_pkg::EvtRingDoorbellOffset;
  assign doorbell_value_o   = req_wdata_i;
  assign irq_o              = |(irq_q & irq_enable_q);
  assign auth_enable_o      = auth_enable_q;
  assign auth_key_o         = auth_key_q;

  // NumStats documents stats_i's width.
  if (NumStats * 32 != 352) begin : gen_stats_width_check
    $error("stats_i width");
  end

endmodule
