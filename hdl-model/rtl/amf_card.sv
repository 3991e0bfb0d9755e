// The card: BAR0 registers, command fetch, completion and event rings, one DMA port shared by
// round-robin, link receive (frame checks, MAC and replay window) and transmit (CRC and seal),
// and the engine with its sharer
// table. Errors latch the first device.status.error_code and stop command and frame processing
// until a soft reset, like the reference model.

module amf_card #(
  // Operations waiting for acks at once (the model's INFLIGHT_MAX).
  parameter int unsigned Inflight      = 16,
  // Sharer table shape (the model's TABLE_SETS_LOG2, TABLE_WAYS).
  parameter int unsigned TableSetsLog2 = 6,
  parameter int unsigned TableWays     = 4,
  // Nodes whose liveness the engine tracks (up to 8).
  parameter int unsigned Nodes         = 8,
  // Peers' held requests waiting for this host's yield at once (the model's OWED_MAX).
  parameter int unsigned OwedMax       = 32,
  // Presence filter buckets, log2 (the model's PRESENCE_BUCKETS_LOG2).
  parameter int unsigned PresenceLog2  = 14,
  // The link MAC a half SipRound per cycle (an iCE40's timing) instead of a round (amf_siphash).
  parameter bit          MacHalfRounds = 1'b0
) (
  input  logic         clk_i,
  input  logic         rst_ni,
  // BAR0
  input  logic         reg_req_valid_i,
  input  logic         reg_req_write_i,
  input  logic [11:0]  reg_req_addr_i,
  input  logic [31:0]  reg_req_wdata_i,
  output logic         reg_rsp_valid_o,
  output logic [31:0]  reg_rsp_rdata_o,
  // DMA port (host memory)
  output logic         dma_req_valid_o,
  input  logic         dma_req_ready_i,
  output logic         dma_req_write_o,
  output logic [63:0]  dma_req_addr_o,
  output logic [5:0]   dma_req_bytes_o,
  output logic [255:0] dma_req_wdata_o,
  input  logic         dma_rsp_valid_i,
  input  logic         dma_rsp_error_i,
  input  logic [255:0] dma_rsp_rdata_i,
  // link
  input  logic         link_rx_valid_i,
  output logic         link_rx_ready_o,
  input  logic [383:0] link_rx_frame_i,  // wire frame: link frame, then link_seal
  output logic         link_tx_valid_o,
  input  logic         link_tx_ready_i,
  output logic [383:0] link_tx_frame_o,
  output logic         irq_o,
  // the card has work or a timer running; a simulation may stop its clock while this is low
  output logic         busy_o,
  // the card has work to do now (busy_o less waiting for answers, timers and the host)
  output logic         active_o
);
  // ---- registers ----------------------------------------------------------------------------
  logic        enable, soft_reset, cmd_db, cpl_db, evt_db;
  logic [2:0]  node_id;
  logic [7:0]  peers;
  logic [31:0] epoch, ack_timeout, heartbeat, db_value, cmd_size, cpl_size, evt_size;
  logic [63:0] cmd_base, cmd_cons_addr, cpl_base, evt_base;
  logic [7:0]  error_q;
  logic [2:0]  irq_set;
  logic [31:0] occupancy, full_fallbacks, filtered;
  logic        filter_on;
  logic [31:0] frames_tx, bad_commands, broadcasts, skipped, ack_timeouts;
  logic [31:0] frames_rx_q, crc_errors_q, stale_q, malformed_q, forged_q, replayed_q;
  logic        auth_en;
  logic [127:0] auth_key;

  amf_regs #(
    .TableSetsLog2(TableSetsLog2), .TableWays(TableWays), .PresenceLog2(PresenceLog2)
  ) u_regs (
    .clk_i,
    .rst_ni,
    .req_valid_i        (reg_req_valid_i),
    .req_write_i        (reg_req_write_i),
    .req_addr_i         (reg_req_addr_i),
    .req_wdata_i        (reg_req_wdata_i),
    .rsp_valid_o        (reg_rsp_valid_o),
    .rsp_rdata_o        (reg_rsp_rdata_o),
    .ctrl_enable_o      (enable),
    .soft_reset_o       (soft_reset),
    .node_id_o          (node_id),
    .peers_o            (peers),
    .epoch_o            (epoch),
    .ack_timeout_o      (ack_timeout),
    .heartbeat_period_o (heartbeat),
    .cmd_base_o         (cmd_base),
    .cmd_size_log2_o    (cmd_size),
    .cmd_cons_addr_o    (cmd_cons_addr),
    .cpl_base_o         (cpl_base),
    .cpl_size_log2_o    (cpl_size),
    .evt_base_o         (evt_base),
    .evt_size_log2_o    (evt_size),
    .cmd_doorbell_o     (cmd_db),
    .cpl_doorbell_o     (cpl_db),
    .evt_doorbell_o     (evt_db),
    .doorbell_value_o   (db_value),
    .auth_enable_o      (auth_en),
    .auth_key_o         (auth_key),
    .irq_o,
    .ready_i            (1'b1),
    .error_code_i       (error_q),
    .irq_set_i          (irq_set),
    .occupancy_i        (occupancy),
    .full_fallbacks_i   (full_fallbacks),
    .filter_on_i        (filter_on),
    .filtered_i         (filtered),
    .stats_i            ({replayed_q, forged_q, ack_timeouts, skipped, broadcasts, bad_commands,
                          malformed_q, stale_q, crc_errors_q, frames_rx_q, frames_tx})
  );

  // Authentication counters and windows are per epoch: a new device.epoch value restarts them.
  logic [31:0] epoch_seen_q;
  logic        epoch_changed;
  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) epoch_seen_q <= amf_regs_pkg::DeviceEpochReset;
    else         epoch_seen_q <= epoch;
  end
  assign epoch_changed = epoch != epoch_seen_q;

  logic running;
  assign running = enable && error_q == 8'd0;

  // ---- DMA clients --------------------------------------------------------------------------
  logic [2:0]        dreq_valid, dreq_ready, dreq_write, drsp_valid;
  // Per-client buses, client c at [c*W +: W] (see amf_dma_arb).
  logic [3*64-1:0]   dreq_addr;
  logic [3*6-1:0]    dreq_bytes;
  logic [3*256-1:0]  dreq_wdata;
  logic              drsp_error;
  logic [255:0]      drsp_rdata;

  amf_dma_arb #(.Clients(3)) u_arb (
    .clk_i,
    .rst_ni,
    .req_valid_i     (dreq_valid),
    .req_ready_o     (dreq_ready),
    .req_write_i     (dreq_write),
    .req_addr_i      (dreq_addr),
    .req_bytes_i     (dreq_bytes),
    .req_wdata_i     (dreq_wdata),
    .rsp_valid_o     (drsp_valid),
    .rsp_error_o     (drsp_error),
    .rsp_rdata_o     (drsp_rdata),
    .dma_req_valid_o,
    .dma_req_ready_i,
    .dma_req_write_o,
    .dma_req_addr_o,
    .dma_req_bytes_o,
    .dma_req_wdata_o,
    .dma_rsp_valid_i,
    .dma_rsp_error_i,
    .dma_rsp_rdata_i
  );

  // Client 0: command fetch.
  logic         cmd_valid, cmd_ready, fetch_err;
  logic [255:0] cmd;
  logic [7:0]   fetch_code;
  logic [31:0]  fetch_wdata, cmd_cons;
  logic         fetch_busy, cpl_busy, evt_busy, engine_busy, engine_active;

  amf_cmd_fetch u_fetch (
    .clk_i,
    .rst_ni,
    .clear_i          (soft_reset),
    .enable_i         (running),
    .base_i           (cmd_base),
    .size_log2_i      (cmd_size),
    .cons_addr_i      (cmd_cons_addr),
    .doorbell_i       (cmd_db),
    .doorbell_value_i (db_value),
    .out_valid_o      (cmd_valid),
    .out_ready_i      (cmd_ready),
    .out_cmd_o        (cmd),
    .dma_req_valid_o  (dreq_valid[0]),
    .dma_req_ready_i  (dreq_ready[0]),
    .dma_req_write_o  (dreq_write[0]),
    .dma_req_addr_o   (dreq_addr[0+:64]),
    .dma_req_bytes_o  (dreq_bytes[0+:6]),
    .dma_req_wdata_o  (fetch_wdata),
    .dma_rsp_valid_i  (drsp_valid[0]),
    .dma_rsp_error_i  (drsp_error),
    .dma_rsp_rdata_i  (drsp_rdata),
    .error_o          (fetch_err),
    .error_code_o     (fetch_code),
    .cons_o           (cmd_cons),
    .busy_o           (fetch_busy)
  );
  assign dreq_wdata[0+:256] = {224'd0, fetch_wdata};

  // Clients 1 and 2: completion and event writers.
  logic         cpl_valid, cpl_ready, cpl_written, cpl_err;
  logic         evt_valid, evt_ready, evt_written, evt_err;
  logic [255:0] cpl_entry, evt_entry;
  logic [7:0]   cpl_code, evt_code;
  logic [31:0]  cpl_prod, evt_prod, cpl_space, evt_space;
  logic         cpl_room, evt_room;
  logic [7:0]   cpl_space_sat, evt_space_sat;

  amf_ring_writer u_cpl (
    .clk_i,
    .rst_ni,
    .clear_i           (soft_reset),
    .base_i            (cpl_base),
    .size_log2_i       (cpl_size),
    .host_cons_valid_i (cpl_db),
    .host_cons_i       (db_value),
    .entry_valid_i     (cpl_valid),
    .entry_ready_o     (cpl_ready),
    .entry_i           (cpl_entry),
    .dma_req_valid_o   (dreq_valid[1]),
    .dma_req_ready_i   (dreq_ready[1]),
    .dma_req_addr_o    (dreq_addr[64+:64]),
    .dma_req_data_o    (dreq_wdata[256+:256]),
    .dma_rsp_valid_i   (drsp_valid[1]),
    .dma_rsp_error_i   (drsp_error),
    .written_o         (cpl_written),
    .error_o           (cpl_err),
    .error_code_o      (cpl_code),
    .prod_o            (cpl_prod),
    .space_o           (cpl_space),
    .room_o            (cpl_room),
    .space_sat_o       (cpl_space_sat),
    .busy_o            (cpl_busy)
  );

  amf_ring_writer u_evt (
    .clk_i,
    .rst_ni,
    .clear_i           (soft_reset),
    .base_i            (evt_base),
    .size_log2_i       (evt_size),
    .host_cons_valid_i (evt_db),
    .host_cons_i       (db_value),
    .entry_valid_i     (evt_valid),
    .entry_ready_o     (evt_ready),
    .entry_i           (evt_entry),
    .dma_req_valid_o   (dreq_valid[2]),
    .dma_req_ready_i   (dreq_ready[2]),
    .dma_req_addr_o    (dreq_addr[128+:64]),
    .dma_req_data_o    (dreq_wdata[512+:256]),
    .dma_rsp_valid_i   (drsp_valid[2]),
    .dma_rsp_error_i   (drsp_error),
    .written_o         (evt_written),
    .error_o           (evt_err),
    .error_code_o      (evt_code),
    .prod_o            (evt_prod),
    .space_o           (evt_space),
    .room_o            (evt_room),
    .space_sat_o       (evt_space_sat),
    .busy_o            (evt_busy)
  );
  assign dreq_write[1] = 1'b1;
  assign dreq_write[2] = 1'b1;
  assign dreq_bytes[6+:6] = 6'd32;
  assign dreq_bytes[12+:6] = 6'd32;

  // First error wins; a soft reset clears it.
  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      error_q <= '0;
    end else if (soft_reset) begin
      error_q <= '0;
    end else if (error_q == 8'd0) begin
      if (fetch_err) error_q <= fetch_code;
      else if (cpl_err) error_q <= cpl_code;
      else if (evt_err) error_q <= evt_code;
    end
  end
  assign irq_set = {error_q == 8'd0 && (fetch_err || cpl_err || evt_err), evt_written, cpl_written};

  // ---- link receive: the checker's output stage holds a frame until the engine takes it -------
  logic         chk_valid, chk_ready, chk_ok, chk_busy;
  logic [255:0] chk_frame;
  logic [2:0]   chk_verdict;
  logic         rx_ready;

  amf_frame_check #(.MacHalfRounds(MacHalfRounds)) u_check (
    .clk_i,
    .rst_ni,
    .in_valid_i    (link_rx_valid_i),
    .in_ready_o    (link_rx_ready_o),
    .in_frame_i    (link_rx_frame_i),
    .node_id_i     (node_id),
    .peers_i       (peers),
    .epoch_i       (epoch),
    .auth_en_i     (auth_en),
    .key_i         (auth_key),
    .restart_i     (epoch_changed),
    .out_valid_o   (chk_valid),
    .out_ready_i   (chk_ready),
    .out_frame_o   (chk_frame),
    .out_verdict_o (chk_verdict),
    .busy_o        (chk_busy)
  );
  // Good frames wait for the engine; frames arriving while the card is disabled are counted, not
  // acted on; bad ones are counted and dropped at once.
  assign chk_ok    = chk_verdict == 3'd0 && enable;
  assign chk_ready = !chk_ok || rx_ready;

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      frames_rx_q  <= '0;
      crc_errors_q <= '0;
      malformed_q  <= '0;
      stale_q      <= '0;
      forged_q     <= '0;
      replayed_q   <= '0;
    end else if (soft_reset) begin
      frames_rx_q  <= '0;
      crc_errors_q <= '0;
      malformed_q  <= '0;
      stale_q      <= '0;
      forged_q     <= '0;
      replayed_q   <= '0;
    end else if (chk_valid && chk_ready) begin
      unique case (chk_verdict)
        3'd0:    frames_rx_q <= frames_rx_q + 32'd1;
        3'd1:    crc_errors_q <= crc_errors_q + 32'd1;
        3'd2:    malformed_q <= malformed_q + 32'd1;
        3'd3:    stale_q <= stale_q + 32'd1;
        3'd4:    forged_q <= forged_q + 32'd1;
        default: replayed_q <= replayed_q + 32'd1;
      endcase
    end
  end

  // ---- link transmit ------------------------------------------------------------------------
  logic         tx_valid, tx_ready;
  logic [255:0] tx_frame;

  amf_frame_tx #(.MacHalfRounds(MacHalfRounds)) u_tx (
    .clk_i,
    .rst_ni,
    .auth_en_i  (auth_en),
    .key_i      (auth_key),
    .restart_i  (epoch_changed),
    .in_valid_i (tx_valid),
    .in_ready_o (tx_ready),
    .in_frame_i (tx_frame),
    .tx_valid_o (link_tx_valid_o),
    .tx_ready_i (link_tx_ready_i),
    .tx_frame_o (link_tx_frame_o)
  );

  // ---- engine -------------------------------------------------------------------------------
  amf_engine #(
    .Inflight(Inflight), .TableSetsLog2(TableSetsLog2), .TableWays(TableWays), .Nodes(Nodes), .OwedMax(OwedMax),
    .PresenceLog2(PresenceLog2)
  ) u_engine (
    .clk_i,
    .rst_ni,
    .clear_i            (soft_reset),
    .enable_i           (running),
    .node_id_i          (node_id),
    .peers_i            (peers),
    .epoch_i            (epoch),
    .ack_timeout_i      (ack_timeout),
    .heartbeat_period_i (heartbeat),
    .cmd_valid_i        (cmd_valid),
    .cmd_ready_o        (cmd_ready),
    .cmd_i              (cmd),
    .cpl_space_i        (cpl_space_sat),
    .cpl_valid_o        (cpl_valid),
    .cpl_ready_i        (cpl_ready),
    .cpl_o              (cpl_entry),
    .evt_valid_o        (evt_valid),
    .evt_ready_i        (evt_ready),
    .evt_o              (evt_entry),
    .evt_room_i         (evt_room),
    .rx_valid_i         (chk_valid && chk_ok),
    .rx_ready_o         (rx_ready),
    .rx_frame_i         (chk_frame),
    .tx_valid_o         (tx_valid),
    .tx_ready_i         (tx_ready),
    .tx_frame_o         (tx_frame),
    .frames_tx_o        (frames_tx),
    .bad_commands_o     (bad_commands),
    .broadcasts_o       (broadcasts),
    .skipped_o          (skipped),
    .ack_timeouts_o     (ack_timeouts),
    .occupancy_o        (occupancy),
    .full_fallbacks_o   (full_fallbacks),
    .filter_on_o        (filter_on),
    .filtered_o         (filtered),
    .busy_o             (engine_busy),
    .active_o           (engine_active)
  );

  // The checker's own busy, not its ready: a frame moving from its first stage to its second
  // leaves ready high for a cycle with the frame inside, and a clock gated on busy stopped there
  // (the frame then waited for the next input to start the clock again).
  assign active_o = fetch_busy || cpl_busy || evt_busy || engine_active || chk_busy
                    || link_rx_valid_i || !tx_ready || link_tx_valid_o || dma_rsp_valid_i;
  // Busy covers active; only the engine waits (for answers, timers, room in a ring).
  assign busy_o = active_o || engine_busy;

`ifndef SYNTHESIS
  // The host puts events and completions in order by a completion's `events_before`, which it
  // reads only once it sees the completion: an event whose entry reached host memory before the
  // entry of a completion the engine handed over first could be handled before it (an
  // invalidate before the grant it follows). What keeps the order today: each ring writer holds
  // one entry and asks for the port the cycle after it takes it, before the engine can hand over
  // an event, and the arbiter then grants the completion first. A writer that waited before it
  // asked (a pipeline stage, a queue) would break it; this catches that.
  logic cpl_untaken_q;  // an accepted completion's write is not yet taken by the port
  logic cpl_older_q;    // and an event was accepted after it
  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      cpl_untaken_q <= 1'b0;
      cpl_older_q   <= 1'b0;
    end else if (soft_reset || dreq_ready[1]) begin
      cpl_untaken_q <= 1'b0;
      cpl_older_q   <= 1'b0;
    end else begin
      if (cpl_valid && cpl_ready) cpl_untaken_q <= 1'b1;
      if (evt_valid && evt_ready && cpl_untaken_q) cpl_older_q <= 1'b1;
    end
  end
  /* verilator lint_off SYNCASYNCNET */
  EventAfterEarlierCompletion: assert property (@(posedge clk_i) disable iff (!rst_ni)
    !(cpl_older_q && dreq_ready[2]));
  /* verilator lint_on SYNCASYNCNET */
`endif

  logic unused;
  assign unused = ^{cmd_cons, cpl_prod, evt_prod, cpl_space, evt_space, cpl_room, evt_space_sat};

endmodule
