// Sharer table: resource -> (sharer mask, exclusive owner), set-associative, one block RAM per
// way. One request at a time: a lookup, or an update that stores, changes or (with no sharers
// and no owner) frees the resource's entry. A full set stores nothing and says so; the caller
// then treats the resource as "unknown: ask everyone", so correctness never depends on the table
// holding an entry.
//
// Timing: request accepted in IDLE (RAM read issued), ways compared in READ, the entry written
// in WRITE (compare and write in one cycle would limit an iCE40 to ~55 MHz), the response held
// for one cycle in RESP. A soft clear (and reset) walks every set.

module amf_sharer_table #(
  parameter int unsigned SetsLog2 = 6,
  parameter int unsigned Ways     = 4,
  parameter int unsigned Nodes    = 8
) (
  input  logic             clk_i,
  input  logic             rst_ni,
  input  logic             clear_i,
  // request
  input  logic             req_valid_i,
  output logic             req_ready_o,
  input  logic             req_write_i,
  input  logic [63:0]      req_resource_i,
  input  logic [Nodes-1:0] req_sharers_i,
  input  logic [3:0]       req_owner_i,
  // response: the entry as it was before the request
  output logic             rsp_valid_o,
  output logic             rsp_hit_o,
  output logic             rsp_full_o,
  output logic [Nodes-1:0] rsp_sharers_o,
  output logic [3:0]       rsp_owner_o,
  // state
  output logic             ready_o,
  output logic [31:0]      occupancy_o,
  output logic [31:0]      full_fallbacks_o
);
  localparam int unsigned Sets = 1 << SetsLog2;
  localparam int unsigned WayW = Ways > 1 ? $clog2(Ways) : 1;

  // Entry layout {valid, owner, sharers, tag}, as bit fields (yosys 0.23 mishandles members of
  // arrays of packed structs).
  localparam int unsigned TagLsb     = 0;
  localparam int unsigned SharersLsb = 64;
  localparam int unsigned OwnerLsb   = SharersLsb + Nodes;
  localparam int unsigned ValidBit   = OwnerLsb + 4;
  localparam int unsigned EntryW     = ValidBit + 1;
  typedef logic [EntryW-1:0] entry_t;

  typedef enum logic [2:0] {StClear, StIdle, StRead, StWrite, StResp} state_e;

  state_e              state_q, state_d;
  logic [SetsLog2-1:0] clear_idx_q, clear_idx_d;
  logic                write_q;
  logic [63:0]         resource_q;
  logic [Nodes-1:0]    sharers_q;
  logic [3:0]          owner_q;
  logic                rsp_hit_q, rsp_hit_d, rsp_full_q, rsp_full_d;
  logic                any_free_q, any_free_d;
  logic [WayW-1:0]     hit_way_q, hit_way_d, free_way_q, free_way_d;
  logic [Nodes-1:0]    rsp_sharers_q, rsp_sharers_d;
  logic [3:0]          rsp_owner_q, rsp_owner_d;
  logic [31:0]         occupancy_q, occupancy_d, full_q, full_d;

  // One RAM per way, synchronous read; the read words side by side in a packed array.
  logic [Ways*EntryW-1:0] rd_q;  // way w at [w*EntryW +: EntryW] (flat, for yosys)
  logic [SetsLog2-1:0] ram_addr;
  logic [Ways-1:0]     ram_we;
  entry_t              ram_wdata;

  for (genvar w = 0; w < Ways; w++) begin : gen_way
    entry_t mem_q [Sets];
    always_ff @(posedge clk_i) begin
      if (ram_we[w]) begin
        mem_q[ram_addr] <= ram_wdata;
      end
      rd_q[w*EntryW+:EntryW] <= mem_q[ram_addr];
    end
  end

  // Way matching in READ.
  logic [Ways-1:0] hit_vec, free_vec;
  logic            hit, any_free;
  logic [WayW-1:0] hit_way, free_way;
  logic [Nodes-1:0] hit_sharers;
  logic [3:0]       hit_owner;

  always_comb begin
    hit_vec  = '0;
    free_vec = '0;
    for (int unsigned w = 0; w < Ways; w++) begin
      hit_vec[w]  = rd_q[w*EntryW+ValidBit] && rd_q[w*EntryW+TagLsb+:64] == resource_q;
      free_vec[w] = !rd_q[w*EntryW+ValidBit];
    end
    hit      = |hit_vec;
    any_free = |free_vec;
    hit_way   = '0;
    free_way  = '0;
    hit_sharers = '0;
    hit_owner   = '0;
    // Lowest matching and lowest free way (the reference model allocates the same way).
    for (int w = Ways - 1; w >= 0; w--) begin
      if (hit_vec[w]) begin
        hit_way   = WayW'(w);
        hit_sharers = rd_q[w*EntryW+SharersLsb+:Nodes];
        hit_owner   = rd_q[w*EntryW+OwnerLsb+:4];
      end
      if (free_vec[w]) free_way = WayW'(w);
    end
  end

  logic release_req;
  assign release_req = sharers_q == '0 && owner_q == '0;

  always_comb begin
    state_d       = state_q;
    clear_idx_d   = clear_idx_q;
    rsp_hit_d     = rsp_hit_q;
    rsp_full_d    = rsp_full_q;
    rsp_sharers_d = rsp_sharers_q;
    rsp_owner_d   = rsp_owner_q;
    occupancy_d   = occupancy_q;
    full_d        = full_q;
    any_free_d    = any_free_q;
    hit_way_d     = hit_way_q;
    free_way_d    = free_way_q;
    ram_addr      = req_resource_i[SetsLog2-1:0];
    ram_we        = '0;
    ram_wdata     = '0;
    unique case (state_q)
      StClear: begin
        ram_addr    = clear_idx_q;
        ram_we      = '1;
        clear_idx_d = clear_idx_q + 1'b1;
        occupancy_d = '0;
        if (clear_idx_q == SetsLog2'(Sets - 1)) state_d = StIdle;
      end
      StIdle: begin
        if (clear_i) begin
          state_d     = StClear;
          clear_idx_d = '0;
        end else if (req_valid_i) begin
          state_d = StRead;
        end
      end
      StRead: begin
        ram_addr      = resource_q[SetsLog2-1:0];
        rsp_hit_d     = hit;
        rsp_full_d    = 1'b0;
        rsp_sharers_d = hit_sharers;
        rsp_owner_d   = hit_owner;
        any_free_d    = any_free;
        hit_way_d     = hit_way;
        free_way_d    = free_way;
        state_d       = write_q ? StWrite : StResp;
      end
      StWrite: begin
        ram_addr  = resource_q[SetsLog2-1:0];
        ram_wdata = release_req ? '0 : {1'b1, owner_q, sharers_q, resource_q};
        if (rsp_hit_q) begin
          ram_we[hit_way_q] = 1'b1;
          if (release_req) occupancy_d = occupancy_q - 1;
        end else if (!release_req && any_free_q) begin
          ram_we[free_way_q] = 1'b1;
          occupancy_d        = occupancy_q + 1;
        end else if (!release_req) begin
          rsp_full_d = 1'b1;
          full_d     = full_q + 1;
        end
        state_d = StResp;
      end
      StResp: state_d = StIdle;
      default: state_d = StIdle;
    endcase
  end

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      state_q       <= StClear;
      clear_idx_q   <= '0;
      write_q       <= 1'b0;
      resource_q    <= '0;
      sharers_q     <= '0;
      owner_q       <= '0;
      rsp_hit_q     <= 1'b0;
      rsp_full_q    <= 1'b0;
      rsp_sharers_q <= '0;
      rsp_owner_q   <= '0;
      occupancy_q   <= '0;
      full_q        <= '0;
      any_free_q    <= 1'b0;
      hit_way_q     <= '0;
      free_way_q    <= '0;
    end else begin
      state_q       <= state_d;
      clear_idx_q   <= clear_idx_d;
      rsp_hit_q     <= rsp_hit_d;
      rsp_full_q    <= rsp_full_d;
      rsp_sharers_q <= rsp_sharers_d;
      rsp_owner_q   <= rsp_owner_d;
      occupancy_q   <= occupancy_d;
      full_q        <= full_d;
      any_free_q    <= any_free_d;
      hit_way_q     <= hit_way_d;
      free_way_q    <= free_way_d;
      if (state_q == StIdle && req_valid_i && !clear_i) begin
        write_q    <= req_write_i;
        resource_q <= req_resource_i;
        sharers_q  <= req_sharers_i;
        owner_q    <= req_owner_i;
      end
    end
  end

  assign req_ready_o      = state_q == StIdle && !clear_i;
  assign rsp_valid_o      = state_q == StResp;
  assign rsp_hit_o        = rsp_hit_q;
  assign rsp_full_o       = rsp_full_q;
  assign rsp_sharers_o    = rsp_sharers_q;
  assign rsp_owner_o      = rsp_owner_q;
  assign ready_o          = state_q != StClear;
  assign occupancy_o      = occupancy_q;
  assign full_fallbacks_o = full_q;

`ifndef SYNTHESIS
  // A resource has at most one entry, and occupancy never exceeds the table. (Verilator reads
  // `disable iff (!rst_ni)` as a synchronous use of the async reset: a known false positive.)
  /* verilator lint_off SYNCASYNCNET */
  OneWayPerResource: assert property (@(posedge clk_i) disable iff (!rst_ni)
    state_q == StRead |-> $onehot0(hit_vec));
  OccupancyBounded: assert property (@(posedge clk_i) disable iff (!rst_ni)
    occupancy_q <= Sets * Ways);
  ResponseOneCycle: assert property (@(posedge clk_i) disable iff (!rst_ni)
    rsp_valid_o |=> !rsp_valid_o);
  /* verilator lint_on SYNCASYNCNET */
`endif

endmodule
